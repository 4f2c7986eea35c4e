"""Sweep grids: dotted keys into plain scenario data, point folder names, and the
cartesian product of a scenario's ``[sweep]`` table as validated scenarios."""

from __future__ import annotations

import copy
import itertools
import re
from typing import Any

from innet.config import build
from innet.config.schema import Scenario
from innet.errors import ScenarioError

_TOKEN = re.compile(r"([A-Za-z_][A-Za-z_0-9]*)|\[(\d+)\]")


def _key_path(key: str) -> list[str | int]:
    parts: list[str | int] = []
    rest = key
    while rest:
        m = _TOKEN.match(rest)
        if m is None:
            raise ScenarioError(f"sweep: cannot read key {key!r} (use e.g. workers.f or "
                                f"paths[0].params.lam)")
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        rest = rest[m.end():]
        if rest.startswith("."):
            rest = rest[1:]
    return parts


def set_key(data: dict[str, Any], key: str, value: Any) -> None:
    """Set a dotted key (``workers.f``, ``paths[1].params.lam``) in plain scenario data."""
    parts = _key_path(key)
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                raise ScenarioError(f"sweep: {key}: there is no {'.'.join(map(str, parts[:i]))}"
                                    f"[{part}]")
            node = node[part]
        else:
            if not isinstance(node, dict):
                raise ScenarioError(f"sweep: {key}: {part} is not inside a table")
            node = node.setdefault(part, {})
    last = parts[-1]
    if isinstance(last, int) or not isinstance(node, dict):
        raise ScenarioError(f"sweep: {key}: must name a value inside a table")
    node[last] = value


def fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "-".join(fmt(v) for v in value)
    if isinstance(value, dict):
        return "-".join(f"{k}{fmt(v)}" for k, v in value.items())
    return str(value)


def point_name(values: dict[str, Any], grid: dict[str, list] | None = None) -> str:
    """Folder name of a sweep point, e.g. ``workers.f=1,network.recovery=false``. A
    swept table names only the fields that vary over the grid (``workers=f3-attackalie``,
    not every field of the table)."""
    def shown(key, value):
        if not isinstance(value, dict) or not grid:
            return fmt(value)
        others = [v for v in grid.get(key, []) if isinstance(v, dict)]
        varying = {k: v for k, v in value.items()
                   if any(o.get(k) != v for o in others)}
        varying.update({k: None for o in others for k in o if k not in value})
        return "-".join(f"{k}{fmt(v)}" for k, v in varying.items() if v is not None) or "base"

    text = ",".join(f"{k}={shown(k, v)}" for k, v in values.items())
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "", text.replace("[", "").replace("]", "")) or "base"


def sweep_points(scenario: Scenario) -> list[tuple[str, dict[str, Any], Scenario]]:
    """The grid of a scenario's ``sweep`` table: (folder name, {key: value}, scenario)
    for every point, in order (the cartesian product, last key fastest). A scenario
    without a sweep is its own single point."""
    base = build.to_dict(scenario)
    base["sweep"] = {}
    base["report"] = {}  # claims are checked over the whole grid, by the sweep's report
    grid = scenario.sweep
    if not grid:
        return [("base", {}, scenario)]
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ScenarioError(f"sweep.{key}: expected a non-empty list of values")
    out = []
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        data = copy.deepcopy(base)
        for key, value in values.items():
            set_key(data, key, value)
        name = point_name(values, grid)
        data["name"] = f"{scenario.name}/{name}"
        try:
            out.append((name, values, build.from_dict(data)))
        except ScenarioError as err:
            raise ScenarioError(f"sweep point {name}: {err}") from None
    names = [n for n, _, _ in out]
    if len(set(names)) != len(names):
        raise ScenarioError("sweep: two points get the same folder name; simplify the values")
    return out
