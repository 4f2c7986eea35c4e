"""Scenario validation: values and combinations, each error naming its key."""

from __future__ import annotations

from emulator.network import LinkModel
from emulator.timing import PROFILES
from host.data import DATASETS, EMBEDDED, MODELS_FOR
from host.fa_offload import OffloadedFA
from host.models import MODELS
from host.switch_allreduce import MAX_POOL, MAX_RETRIES
from innet import aggregators, attacks
from innet.claims import check_expression, where_names
from innet.config import grid
from innet.config.schema import (
    OFFLOAD_PARAMS,
    PHASE2_ATTACKS,
    SWITCH_RULES,
    VIAS,
    Scenario,
    split_offload_params,
)
from innet.devices import DEVICE_FORMS, valid_device_name
from innet.errors import ScenarioError


def _choice(key: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ScenarioError(f"{key}: {value!r} is not one of {', '.join(allowed)}")


def _positive(key: str, value, strict: bool = True) -> None:
    if value < 0 or (strict and value == 0):
        raise ScenarioError(f"{key}: must be {'> 0' if strict else '>= 0'}, got {value}")


def _checked(key: str, cls, **kwargs) -> None:
    """Build ``cls(**kwargs)`` for its own checks; its ValueError becomes a
    ScenarioError naming ``key`` (one truth for what a value may be)."""
    try:
        cls(**kwargs)
    except ValueError as err:
        raise ScenarioError(f"{key}: {err}") from None


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
    # each link setting through the class that takes it (emulator.network.LinkModel)
    _checked("network.up_loss", LinkModel, loss=n.up_loss)
    _checked("network.down_loss", LinkModel, loss=n.down_loss)
    _checked("network.duplicate", LinkModel, duplicate=n.duplicate)
    _checked("network.reorder", LinkModel, reorder=n.reorder)
    _checked("network.delay", LinkModel, delay=n.delay, max_delay=n.max_delay)
    if n.burst:
        _checked("network.burst", LinkModel, burst=tuple(n.burst))
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
            if getattr(link, name) is not None:
                _checked(f"{key}.{name}", LinkModel, loss=getattr(link, name))
        for name in ("up_burst", "down_burst"):
            if getattr(link, name) is not None:
                _checked(f"{key}.{name}", LinkModel, burst=tuple(getattr(link, name)))
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
        try:
            aggregators.check_name(path.rule)
        except ValueError as err:
            raise ScenarioError(f"{key}.rule: {err}") from None
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
            try:  # the offload's own checks (host.fa_offload.OffloadedFA)
                OffloadedFA.check_params(off["k_prime"], off["W"], off["b"], off["solver"],
                                         off["quarantine"], off["secret_buckets"],
                                         off["secret_tol"])
            except ValueError as err:
                raise ScenarioError(f"{key}.params.{err}") from None
            _choice(f"{key}.params.phase2_attack", off["phase2_attack"], PHASE2_ATTACKS)
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
    names = [p.name for p in s.paths]
    for i, e in enumerate(s.report.expect):
        check_expression(f"report.expect[{i}].check", e.check, names, kind="check")
        if e.where:
            check_expression(f"report.expect[{i}].where", e.where, where_names(s.sweep),
                             kind="where")
    if s.sweep:
        grid.sweep_points(s)  # every point must be valid on its own
