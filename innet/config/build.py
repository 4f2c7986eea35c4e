"""Scenarios from plain data (parsed TOML) and back: type-checked field by field,
unknown keys rejected with the allowed ones listed, dataset training defaults filled
in, then validated (:mod:`innet.config.validate`)."""

from __future__ import annotations

import dataclasses
import math
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

from innet.config import validate as validation
from innet.config.schema import Scenario
from innet.errors import ScenarioError


def _check_type(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, float) and not math.isfinite(value):
        raise ScenarioError(f"{key}: must be a finite number, got {value}")
    if hint in (int, float, str, bool):
        if type(value) is not hint:
            raise ScenarioError(
                f"{key}: expected {hint.__name__}, got {type(value).__name__} {value!r}"
            )
        return value
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ScenarioError(f"{key}: expected a list, got {type(value).__name__}")
        return [_check_type(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ScenarioError(f"{key}: expected a table, got {type(value).__name__}")
        return dict(value)
    if origin in (typing.Union, types.UnionType):  # X | None: TOML has no null
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _check_type(key, value, inner)
    raise ScenarioError(f"{key}: unsupported type {hint}")  # pragma: no cover


def _build(cls, data: dict[str, Any], prefix: str):
    if not isinstance(data, dict):
        raise ScenarioError(f"{prefix or 'scenario'}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ScenarioError(
            f"unknown key {where}{unknown[0]}; allowed keys{' in ' + prefix if prefix else ''}: "
            + ", ".join(names)
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, key)
        elif (typing.get_origin(hint) is list
              and dataclasses.is_dataclass(typing.get_args(hint)[0])):
            if not isinstance(value, list):
                raise ScenarioError(f"{key}: expected an array of tables")
            item = typing.get_args(hint)[0]
            kwargs[name] = [_build(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        else:
            kwargs[name] = _check_type(key, value, hint)
    return cls(**kwargs)


#: training settings a dataset brings when the scenario leaves them unset, chosen so
#: that the f = 0 mean reaches its plateau (docs/REPRODUCTIONS.md shows the curve)
TRAINING_DEFAULTS = {
    "mnist1d": {"steps": 800, "lr": 0.1, "momentum": 0.9, "milestones": [500], "gamma": 0.1,
                "eval_every": 100},
}


def _dataset_defaults(data: dict[str, Any]) -> dict[str, Any]:
    dataset = (data.get("data") or {}).get("dataset") if isinstance(data.get("data"),
                                                                     dict) else None
    defaults = TRAINING_DEFAULTS.get(dataset)
    if not defaults or not isinstance(data.get("training", {}), dict):
        return data
    return {**data, "training": {**defaults, **data.get("training", {})}}


def from_dict(data: dict[str, Any]) -> Scenario:
    """Build and validate a scenario from plain data (e.g. parsed TOML). A dataset's
    :data:`TRAINING_DEFAULTS` fill the training keys the data leaves unset."""
    scenario = _build(Scenario, _dataset_defaults(data), "")
    validation.validate(scenario)
    return scenario


def read_toml(path: str | Path) -> dict[str, Any]:
    """The plain data of a TOML scenario file (not yet validated)."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ScenarioError(f"scenario file {str(path)!r} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise ScenarioError(f"{path}: not valid TOML: {err}") from None


def load(path: str | Path) -> Scenario:
    """Read and validate a TOML scenario file."""
    return from_dict(read_toml(path))


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def to_dict(scenario: Scenario) -> dict[str, Any]:
    """Plain data (TOML-writable: unset optional fields are left out) that
    :func:`from_dict` turns back into the same scenario."""
    return _drop_none(dataclasses.asdict(scenario))
