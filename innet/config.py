"""Scenarios: a plain dataclass tree, loaded from TOML and validated once at the edge.

Unknown keys, wrong types and impossible combinations (Bulyan with p < 4f+3, more
Byzantine workers than workers, a batch larger than the data allows, …) are rejected
with a :class:`ScenarioError` that names the offending key.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emulator.timing import PROFILES
from host.data import DATASETS, EMBEDDED, MODELS_FOR
from host.models import MODELS
from host.switch_allreduce import MAX_POOL, MAX_RETRIES
from innet import aggregators, attacks
from innet.devices import DEVICE_FORMS, valid_device_name
from innet.quant.fixed_eigen import SOLVERS


class ScenarioError(ValueError):
    """A scenario is invalid; the message names the key."""


@dataclass
class Workers:
    p: int = 15  #: number of workers
    f: int = 3  #: how many of them are Byzantine (the first f)
    attack: str = "uniform"  #: an innet.attacks name, or "none"
    attack_params: dict[str, Any] = field(default_factory=dict)


@dataclass
class Data:
    dataset: str = "digits"
    model: str = "mlp"
    batch: int = 32  #: per worker
    root: str = ""  #: local folder for mnist/cifar10
    download: bool = False


@dataclass
class Training:
    steps: int = 300
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    milestones: list[int] = field(default_factory=list)  #: steps where lr is multiplied by gamma
    gamma: float = 0.2
    eval_every: int = 50  #: steps between test evaluations (and at the last step)
    nonfinite: str = "zero"  #: PS policy for NaN/Inf rows: "zero" or "error"
    #: steps between checkpoints (0: none); a killed run resumes from the last one
    checkpoint_every: int = 0


@dataclass
class LinkOverride:
    """One worker's link, overriding the network-wide loss settings (unset = inherit)."""

    worker: int = -1  #: worker id
    up_loss: float | None = None  #: Bernoulli loss, worker → switch
    down_loss: float | None = None  #: Bernoulli loss, switch → worker
    up_burst: list[float] | None = None  #: Gilbert–Elliott (p_gb, p_bg, l_g, l_b), up
    down_burst: list[float] | None = None  #: Gilbert–Elliott, down


@dataclass
class Network:
    """Links between workers and the switch (used by ``via = "switch"`` paths)."""

    up_loss: float = 0.0  #: Bernoulli loss, worker → switch
    down_loss: float = 0.0  #: Bernoulli loss, switch → worker (multicast/unicast results)
    duplicate: float = 0.0  #: probability a packet arrives twice (both directions)
    reorder: int = 0  #: maximum reordering displacement in packets (both directions)
    burst: list[float] = field(default_factory=list)  #: Gilbert–Elliott (p_gb, p_bg, l_g, l_b)
    lossy_workers: list[int] = field(default_factory=list)  #: links with loss; empty = all
    k: int = 64  #: int32 values per packet
    pool_size: int = 512  #: switch slots per shadow set for the job
    max_retries: int = 20  #: timeouts before a chunk goes to the PS fallback
    failed_port: list[int] = field(default_factory=list)  #: [worker, from_round, to_round]
    links: list[LinkOverride] = field(default_factory=list)  #: per-link loss settings
    #: True: lost packets are retransmitted (switch paths; PS paths use a reliable
    #: transport). False: what is lost stays lost on every path — the receiver (PS or
    #: switch) fills the lost packets' values with zeros (the seeds' loss experiment).
    recovery: bool = True
    crash: list[int] = field(default_factory=list)  #: [worker, step]: it dies mid-step
    # the time model (emulator.timing): what a step would take on a real rack
    bandwidth_gbps: float = 100.0  #: every host ↔ switch link
    latency_us: float = 1.0  #: one way, host ↔ switch
    pass_ns: float = 400.0  #: one switch pipeline pass
    timeout_us: float = 1000.0  #: the workers' retransmission timer
    #: device profile of the PS and the workers (emulator.timing.PROFILES): the
    #: rules' modelled compute time
    host_profile: str = "a100"
    #: device profile of the switch's control plane (the FA offload's solve)
    control_plane_profile: str = "switch_cpu"


@dataclass
class AggregationPath:
    """One aggregation path: where the aggregation runs and with which rule."""

    rule: str = "mean"
    via: str = "ps"  #: "ps" (parameter server, float) or "switch" (in-network integer sum)
    label: str = ""  #: name in the outputs; defaults to "<rule>" (or "<via>:<rule>")
    params: dict[str, Any] = field(default_factory=dict)  #: rule hyper-parameters

    @property
    def name(self) -> str:
        return self.label or (self.rule if self.via == "ps" else f"{self.via}:{self.rule}")


@dataclass
class Expectation:
    """A claim the report checks on final test accuracies, e.g.
    ``check = "'fa' >= 'multi_krum' - 0.01"`` (a quoted name is that path's final
    accuracy), optionally only at sweep points where ``where`` holds
    (``where = "workers.f >= 1"``)."""

    check: str = ""
    where: str = ""


@dataclass
class Report:
    """What the report says next to its figures."""

    claim: str = ""  #: the seeds' claim this scenario reproduces (REFERENCE §1.5)
    x: str = ""  #: sweep key on the x axis of "final accuracy vs …" (default: the first)
    expect: list[Expectation] = field(default_factory=list)  #: checked and reported


@dataclass
class Scenario:
    name: str = "default"
    seed: int = 0
    #: run every path once per seed (mean ± sd in the summary); empty: just ``seed``
    seeds: list[int] = field(default_factory=list)
    device: str = "auto"
    out: str = ""  #: output folder; defaults to runs/<name>
    workers: Workers = field(default_factory=Workers)
    data: Data = field(default_factory=Data)
    training: Training = field(default_factory=Training)
    network: Network = field(default_factory=Network)
    paths: list[AggregationPath] = field(
        default_factory=lambda: [
            AggregationPath(rule=r) for r in ("mean", "median", "multi_krum", "bulyan", "fa")
        ]
    )
    #: a grid: dotted scenario key → list of values (``innet sweep``; ``innet run`` too)
    sweep: dict[str, Any] = field(default_factory=dict)
    report: Report = field(default_factory=Report)


VIAS = ("ps", "switch", "offload")
SWITCH_RULES = ("mean",)
#: parameters of an ``offload`` path that are not FA's (host.fa_offload.OffloadedFA)
OFFLOAD_PARAMS = {"k_prime": 4096, "W": 24, "b": 16, "solver": "bfp", "defences": True,
                  "phase2_attack": "none"}
PHASE2_ATTACKS = ("none", "scaled", "replace", "null_space")


def split_offload_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the offload's own parameters with defaults filled in, FA's parameters)."""
    fa = {k: v for k, v in params.items() if k not in OFFLOAD_PARAMS}
    return {**OFFLOAD_PARAMS, **{k: params[k] for k in params if k in OFFLOAD_PARAMS}}, fa


# -- building from plain data ------------------------------------------------------------
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
    validate(scenario)
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


# -- sweeps --------------------------------------------------------------------------------
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


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "-".join(_fmt(v) for v in value)
    if isinstance(value, dict):
        return "-".join(f"{k}{_fmt(v)}" for k, v in value.items())
    return str(value)


def point_name(values: dict[str, Any], grid: dict[str, list] | None = None) -> str:
    """Folder name of a sweep point, e.g. ``workers.f=1,network.recovery=false``. A
    swept table names only the fields that vary over the grid (``workers=f3-attackalie``,
    not every field of the table)."""
    def shown(key, value):
        if not isinstance(value, dict) or not grid:
            return _fmt(value)
        others = [v for v in grid.get(key, []) if isinstance(v, dict)]
        varying = {k: v for k, v in value.items()
                   if any(o.get(k) != v for o in others)}
        varying.update({k: None for o in others for k in o if k not in value})
        return "-".join(f"{k}{_fmt(v)}" for k, v in varying.items() if v is not None) or "base"

    text = ",".join(f"{k}={shown(k, v)}" for k, v in values.items())
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "", text.replace("[", "").replace("]", "")) or "base"


def sweep_points(scenario: Scenario) -> list[tuple[str, dict[str, Any], Scenario]]:
    """The grid of a scenario's ``sweep`` table: (folder name, {key: value}, scenario)
    for every point, in order (the cartesian product, last key fastest). A scenario
    without a sweep is its own single point."""
    base = to_dict(scenario)
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
            out.append((name, values, from_dict(data)))
        except ScenarioError as err:
            raise ScenarioError(f"sweep point {name}: {err}") from None
    names = [n for n, _, _ in out]
    if len(set(names)) != len(names):
        raise ScenarioError("sweep: two points get the same folder name; simplify the values")
    return out


# -- validation ----------------------------------------------------------------------------
def _choice(key: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ScenarioError(f"{key}: {value!r} is not one of {', '.join(allowed)}")


def _positive(key: str, value, strict: bool = True) -> None:
    if value < 0 or (strict and value == 0):
        raise ScenarioError(f"{key}: must be {'> 0' if strict else '>= 0'}, got {value}")


def validate(s: Scenario) -> None:
    """Check values and combinations; raise :class:`ScenarioError` naming the key."""
    w, d, t = s.workers, s.data, s.training
    if not valid_device_name(s.device):
        raise ScenarioError(f"device: {s.device!r} is not one of {', '.join(DEVICE_FORMS)}")
    _positive("workers.p", w.p)
    _positive("workers.f", w.f, strict=False)
    if w.f >= w.p:
        raise ScenarioError(f"workers.f: must be < workers.p ({w.p}), got {w.f}")
    _choice("workers.attack", w.attack, ("none", *attacks.NAMES))
    try:
        attacks.get(w.attack, **w.attack_params)
    except ValueError as err:
        raise ScenarioError(f"workers.attack_params: {err}") from None
    _choice("data.dataset", d.dataset, DATASETS)
    _choice("data.model", d.model, MODELS)
    _positive("data.batch", d.batch)
    if d.dataset not in EMBEDDED and not d.root:
        raise ScenarioError(f"data.root: dataset {d.dataset!r} needs a local folder "
                            f"(embedded, no files needed: {', '.join(EMBEDDED)})")
    if d.dataset in EMBEDDED and w.p * d.batch > EMBEDDED[d.dataset]:
        raise ScenarioError(
            f"data.batch: p·batch = {w.p * d.batch} exceeds the {EMBEDDED[d.dataset]} "
            f"{d.dataset} training examples")
    if d.dataset in MODELS_FOR and d.model not in MODELS_FOR[d.dataset]:
        raise ScenarioError(f"data.model: {d.dataset} takes {', '.join(MODELS_FOR[d.dataset])}, "
                            f"got {d.model!r}")
    _positive("training.steps", t.steps)
    _positive("training.lr", t.lr)
    _positive("training.momentum", t.momentum, strict=False)
    _positive("training.weight_decay", t.weight_decay, strict=False)
    _positive("training.eval_every", t.eval_every)
    _positive("training.checkpoint_every", t.checkpoint_every, strict=False)
    if len(set(s.seeds)) != len(s.seeds):
        raise ScenarioError(f"seeds: each seed once, got {s.seeds}")
    _choice("training.nonfinite", t.nonfinite, ("zero", "error"))
    n = s.network
    for name in ("up_loss", "down_loss", "duplicate"):
        value = getattr(n, name)
        if not 0.0 <= value <= 1.0:
            raise ScenarioError(f"network.{name}: must be in [0, 1], got {value}")
    _positive("network.reorder", n.reorder, strict=False)
    if n.burst and (len(n.burst) != 4 or not all(0.0 <= x <= 1.0 for x in n.burst)):
        raise ScenarioError(f"network.burst: expected 4 probabilities, got {n.burst}")
    bad = [i for i in n.lossy_workers if not 0 <= i < w.p]
    if bad:
        raise ScenarioError(f"network.lossy_workers: {bad} are not worker ids 0..{w.p - 1}")
    _positive("network.k", n.k)
    _positive("network.pool_size", n.pool_size, strict=False)
    _positive("network.max_retries", n.max_retries, strict=False)
    if n.pool_size > MAX_POOL:
        raise ScenarioError(f"network.pool_size: at most {MAX_POOL} (the header's 15-bit slot "
                            f"field), got {n.pool_size}")
    if n.max_retries > MAX_RETRIES:
        raise ScenarioError(f"network.max_retries: at most {MAX_RETRIES}, got {n.max_retries}")
    for name in ("bandwidth_gbps", "latency_us", "pass_ns", "timeout_us"):
        _positive(f"network.{name}", getattr(n, name))
    _choice("network.host_profile", n.host_profile, PROFILES)
    _choice("network.control_plane_profile", n.control_plane_profile, PROFILES)
    if n.failed_port and (len(n.failed_port) != 3 or not 0 <= n.failed_port[0] < w.p
                          or not 0 <= n.failed_port[1] <= n.failed_port[2]):
        raise ScenarioError(
            f"network.failed_port: expected [worker in 0..{w.p - 1}, from_round, to_round] "
            f"with from_round <= to_round, got {n.failed_port}")
    seen_links = set()
    for i, link in enumerate(n.links):
        key = f"network.links[{i}]"
        if not 0 <= link.worker < w.p:
            raise ScenarioError(f"{key}.worker: expected a worker id in 0..{w.p - 1}, "
                                f"got {link.worker}")
        if link.worker in seen_links:
            raise ScenarioError(f"{key}.worker: worker {link.worker} has two entries")
        seen_links.add(link.worker)
        for name in ("up_loss", "down_loss"):
            value = getattr(link, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ScenarioError(f"{key}.{name}: must be in [0, 1], got {value}")
        for name in ("up_burst", "down_burst"):
            value = getattr(link, name)
            if value is not None and (len(value) != 4 or not all(0 <= x <= 1 for x in value)):
                raise ScenarioError(f"{key}.{name}: expected 4 probabilities, got {value}")
    if n.crash:
        if len(n.crash) != 2 or not 0 <= n.crash[0] < w.p or not 1 <= n.crash[1] <= t.steps:
            raise ScenarioError(f"network.crash: expected [worker in 0..{w.p - 1}, step in "
                                f"1..{t.steps}], got {n.crash}")
        if w.p < 2:
            raise ScenarioError("network.crash: needs at least 2 workers")
    if not s.paths:
        raise ScenarioError("paths: at least one aggregation path is needed")
    seen = set()
    for i, path in enumerate(s.paths):
        key = f"paths[{i}]"
        _choice(f"{key}.via", path.via, VIAS)
        _choice(f"{key}.rule", path.rule, aggregators.NAMES)
        if path.via == "switch":
            if path.rule not in SWITCH_RULES:
                raise ScenarioError(
                    f"{key}.rule: the switch path runs the streaming sum, so rule must be one "
                    f"of {', '.join(SWITCH_RULES)}; got {path.rule!r}"
                )
            if w.p > 32:
                raise ScenarioError(f"workers.p: the switch bitmap holds 32 workers, got {w.p}")
        off, fa_params = split_offload_params(path.params)
        allowed = [k for k in aggregators.parameters(path.rule) if k != "eigh"]
        if path.via == "offload":
            allowed += list(OFFLOAD_PARAMS)
        unknown = sorted(set(path.params) - set(allowed))
        if unknown:
            raise ScenarioError(f"{key}.params: unknown key {unknown[0]!r} for "
                                f"{path.via}:{path.rule}; allowed keys: {', '.join(allowed)}")
        if path.via == "offload":
            if path.rule != "fa":
                raise ScenarioError(f"{key}.rule: the offload path runs FA; got {path.rule!r}")
            if w.p > 32:
                raise ScenarioError(f"workers.p: the switch bitmap holds 32 workers, got {w.p}")
            if not 12 <= off["W"] <= 32:
                raise ScenarioError(f"{key}.params.W: word length must be in 12..32")
            if not 2 <= off["b"] <= 31:
                raise ScenarioError(f"{key}.params.b: sketch bits must be in 2..31")
            if off["k_prime"] < 1:
                raise ScenarioError(f"{key}.params.k_prime: must be >= 1")
            _choice(f"{key}.params.phase2_attack", off["phase2_attack"], PHASE2_ATTACKS)
            _choice(f"{key}.params.solver", off["solver"], SOLVERS)
        else:
            fa_params = dict(path.params)  # other paths take every parameter as the rule's
        if path.name in seen:
            raise ScenarioError(f"{key}.label: two paths are named {path.name!r}; set label")
        seen.add(path.name)
        try:
            rule = aggregators.get(path.rule, **{"f": w.f, **fa_params})
        except ValueError as err:
            raise ScenarioError(f"{key}.params: {err}") from None
        if rule.requirement is not None:
            text, ok = rule.requirement
            if not ok(w.p, rule.f):
                raise ScenarioError(
                    f"{key}.rule: {path.rule} needs {text}, but workers.p={w.p} and f={rule.f}"
                )
            if n.crash and not ok(w.p - 1, rule.f):
                raise ScenarioError(
                    f"{key}.rule: {path.rule} needs {text}; after network.crash only "
                    f"{w.p - 1} workers are left (f={rule.f})")
    if s.report.x and s.report.x not in s.sweep:
        raise ScenarioError(f"report.x: {s.report.x!r} is not a sweep key "
                            f"({', '.join(s.sweep) or 'no sweep'})")
    from innet.claims import check_expression, where_names  # claims imports this module

    names = [p.name for p in s.paths]
    for i, e in enumerate(s.report.expect):
        check_expression(f"report.expect[{i}].check", e.check, names, kind="check")
        if e.where:
            check_expression(f"report.expect[{i}].where", e.where, where_names(s.sweep),
                             kind="where")
    if s.sweep:
        sweep_points(s)  # every point must be valid on its own
