"""The experiment runner: one scenario, several aggregation paths, same data and attack.

Every path trains its own copy of the model from the same initial weights, sees the
same minibatch stream and the same attack randomness, so differences between paths
come from the aggregation alone. Metrics stream to ``metrics.jsonl`` (one JSON object
per line, flushed: a crash loses at most the line being written); ``summary.json``,
``config.toml`` (the resolved scenario) and a printed table come at the end.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
import torch
from tqdm.auto import tqdm

from emulator.network import LinkModel
from emulator.timing import PROFILES, TimeModel
from host import data as datasets
from host import models
from host.ps import ParameterServer
from host.switch_allreduce import SwitchAllreduce
from host.transport import ReliableTransport, UnreliableUplink
from host.worker import WorkerPool, evaluate
from innet import aggregators, attacks
from innet.config import AggregationPath, Scenario, split_offload_params, to_dict
from innet.devices import pick_device
from p4_models import streaming_sum, tofino1


@dataclass
class PathResult:
    final_test_accuracy: float
    final_test_loss: float
    final_train_loss: float
    seconds_per_step: float
    aggregate_seconds_per_step: float
    modelled_seconds_per_step: float  #: emulator.timing: the step's aggregation on a rack
    nonfinite_rows: int
    #: totals over the run: bytes on the wire, and for in-network paths retransmissions,
    #: fallbacks, drops; packets lost without recovery; crashed workers
    network: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class MetricsWriter:
    """Appends JSON lines and flushes each one."""

    def __init__(self, path: Path):
        self.fh = path.open("w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self.fh.write(json.dumps(record) + "\n")
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()


def output_dir(scenario: Scenario, out: str | None = None) -> Path:
    return Path(out or scenario.out or f"runs/{scenario.name}")


def link_models(scenario: Scenario) -> tuple[list[LinkModel], list[LinkModel]]:
    """(up, down) link models of every worker from the scenario's ``[network]``:
    the network-wide settings on ``lossy_workers`` (all when empty), per-link
    ``[[network.links]]`` overrides, and the failed port."""
    n, p = scenario.network, scenario.workers.p
    lossy = set(n.lossy_workers or range(p))
    overrides = {link.worker: link for link in n.links}

    def model(direction: str, worker: int) -> LinkModel:
        loss = getattr(n, f"{direction}_loss") if worker in lossy else 0.0
        burst = tuple(n.burst) if n.burst and worker in lossy else None
        o = overrides.get(worker)
        if o is not None:
            if getattr(o, f"{direction}_loss") is not None:
                loss, burst = getattr(o, f"{direction}_loss"), None
            if getattr(o, f"{direction}_burst") is not None:
                burst = tuple(getattr(o, f"{direction}_burst"))
        down = None
        if n.failed_port and n.failed_port[0] == worker:  # rounds during which it is dead
            down = (n.failed_port[1], n.failed_port[2])
        return LinkModel(loss=loss, burst=burst, duplicate=n.duplicate, reorder=n.reorder,
                         down_between=down)

    return [model("up", w) for w in range(p)], [model("down", w) for w in range(p)]


def build_switch(scenario: Scenario, workers: list[int] | None = None,
                 **kwargs) -> SwitchAllreduce:
    """The in-network aggregation of a scenario's network section for ``workers``
    (default: all; after a crash the control plane re-leases the job without the dead
    worker). Without recovery the up links' loss has already happened on the way in
    (:class:`host.transport.UnreliableUplink`), so the switch's up links are lossless.
    kwargs go to :class:`SwitchAllreduce`, e.g. ``wire=True, capture=N``."""
    n = scenario.network
    workers = list(range(scenario.workers.p)) if workers is None else workers
    up, down = link_models(scenario)
    if not n.recovery:
        up = [LinkModel() for _ in up]
    return SwitchAllreduce(
        len(workers), n.k, n.pool_size,
        up=[up[w] for w in workers], down=[down[w] for w in workers],
        max_retries=n.max_retries, seed=scenario.seed, **kwargs,
    )


def build_offload(scenario: Scenario, path: AggregationPath, switch: SwitchAllreduce,
                  p: int | None = None):
    """The two-phase FA offload of an ``offload`` path (host.fa_offload)."""
    from host import fa_offload

    params, fa_params = split_offload_params(path.params)
    byz = list(range(scenario.workers.f))
    off = fa_offload.OffloadedFA(
        p or scenario.workers.p, scenario.workers.f, k_prime=params["k_prime"],
        W=params["W"], b=params["b"], solver=params["solver"], seed=scenario.seed, switch=switch,
        defences=params["defences"], **fa_params)
    attack = params["phase2_attack"]
    if attack != "none" and byz:
        off.phase2_attack = {"scaled": fa_offload.scaled_phase2,
                             "replace": fa_offload.replace_phase2,
                             "null_space": fa_offload.null_space_phase2}[attack](byz)
    return off


def time_model(scenario: Scenario) -> TimeModel:
    n = scenario.network
    recirculations = streaming_sum(n.k, max(n.pool_size, 1)).report(tofino1).recirculations
    return TimeModel(n.bandwidth_gbps, n.latency_us, n.pass_ns, n.timeout_us, recirculations,
                     host=PROFILES[n.host_profile],
                     control_plane=PROFILES[n.control_plane_profile])


def warm_up(rule: aggregators.Aggregator, p: int, device: torch.device) -> None:
    """Call the rule once on a small stack, so that its CPU kernels are compiled (or
    loaded from Numba's cache) before the first timed step, then forget any state
    the call left (centered clipping keeps its last output)."""
    G = torch.randn(p, 64, generator=torch.Generator().manual_seed(0)).to(device)
    try:
        rule(G)
    except aggregators.PreconditionError:  # the run itself reports it
        return
    if hasattr(rule, "reset"):
        rule.reset()


def add_stats(total: dict[str, Any], step: dict[str, Any]) -> None:
    for key, value in step.items():
        if isinstance(value, dict):
            add_stats(total.setdefault(key, {}), value)
        else:
            total[key] = total.get(key, 0) + value


class _Aggregation:
    """One path's aggregation for one step: G (rows of the live workers) → the update
    the PS applies, what the step would take on a rack, and what happened."""

    def __init__(self, scenario: Scenario, path: AggregationPath, ps: ParameterServer):
        self.scenario, self.path, self.ps = scenario, path, ps
        self.clock = time_model(scenario)
        self.k = scenario.network.k
        self.switch = self.offload = self.transport = None
        self.lease(list(range(scenario.workers.p)))

    def lease(self, live: list[int]) -> None:
        """The control plane leases the job for the live workers (again after a crash)."""
        if self.path.via == "ps" and self.scenario.network.recovery:
            up, down = link_models(self.scenario)
            self.transport = ReliableTransport([up[w] for w in live], [down[w] for w in live],
                                               self.k, self.scenario.seed)
        if self.path.via in ("switch", "offload"):
            self.switch = build_switch(self.scenario, live)
        if self.path.via == "offload":
            self.offload = build_offload(self.scenario, self.path, self.switch, p=len(live))

    def crash_step(self, G: torch.Tensor, worker: int, live: list[int]):
        """The step during which ``worker`` dies: the in-network paths lose it mid-step
        (timeouts, fallback); the PS path waits out its transport's timeouts and
        aggregates the live rows."""
        n = self.scenario.network
        timeouts = n.max_retries * n.timeout_us * 1e-6
        if self.path.via == "switch":
            self.switch.crash(worker)
            return self.step(G)
        update, modelled, stats = (self._ps(G[live]) if self.path.via == "ps"
                                   else self._offload_fallback(self.ps.screen(G[live])))
        return update, modelled + timeouts, stats

    def step(self, G: torch.Tensor):
        if self.path.via == "ps":
            return self._ps(G)  # the rule finds non-finite rows in its own pass
        G = self.ps.screen(G)  # in-network: before anything is quantised
        if self.path.via == "offload":
            return self._offload(G)
        return self._switch(G)

    def _ps(self, G):
        update = self.ps.aggregate(G)
        p, n = G.shape
        modelled = self.clock.ps_step_s(p, n, self.ps.rule.cost(p, n), self.k)
        stats = {"bytes_on_wire": self.clock.ps_bytes(p, n, self.k)}
        if self.transport is not None and not self.transport.lossless:
            resent = self.transport.step(n)
            modelled += self.clock.retransmission_s(resent, self.k)
            stats["ps_retransmissions"] = sum(resent)
            stats["bytes_on_wire"] += sum(resent) * self.clock.packet_bytes(self.k)
        return update, modelled, stats

    def _switch(self, G):
        tick = time.perf_counter()
        p = G.shape[0]
        total, stats = self.switch.allreduce(G.detach().to("cpu", torch.float32).numpy())
        update = torch.from_numpy(total / p).to(G.device, torch.float32)
        self.ps.aggregate_seconds += time.perf_counter() - tick
        step = stats.as_dict()
        step["bytes_on_wire"] = ((stats.packets_up + stats.packets_down)
                                 * self.clock.packet_bytes(self.k))
        return update, self.clock.switch_step_s(stats.round_log, self.k), step

    def _offload(self, G):
        tick = time.perf_counter()
        total, ost = self.offload.aggregate(G)
        self.ps.aggregate_seconds += time.perf_counter() - tick
        step = {"fallback_steps": int(ost.fallback), "checks_failed": len(ost.checks_failed),
                "clamped_values": ost.clamped_values}
        p, n = G.shape
        modelled = (self.clock.serialise_s(ost.sketch_bytes_per_worker)
                    + 2e-6 * self.clock.latency_us
                    + self.clock.host.seconds(self.offload.worker_cost(n))
                    + self.clock.control_plane.seconds(self.offload.control_plane_cost(p)))
        wire = G.shape[0] * ost.sketch_bytes_per_worker
        if ost.phase2 is not None:
            modelled += self.clock.switch_step_s(ost.phase2.round_log, self.k)
            step.update(ost.phase2.as_dict())
            wire += (ost.phase2.packets_up + ost.phase2.packets_down) * self.clock.packet_bytes(
                self.k)
        else:  # fell back: the PS gathers the full gradients and runs full FA
            modelled += self.clock.ps_step_s(p, n, self.offload.full.cost(p, n), self.k)
            wire += self.clock.ps_bytes(*G.shape, self.k)
        step["bytes_on_wire"] = wire
        update = torch.from_numpy(total).to(G.device, torch.float32)
        return update, modelled, step

    def _offload_fallback(self, G):
        """Phase 1 never completes (a worker died): the PS runs full FA."""
        tick = time.perf_counter()
        update = self.offload.full(G.detach().to("cpu", torch.float64)).to(G.device,
                                                                           torch.float32)
        self.ps.aggregate_seconds += time.perf_counter() - tick
        p, n = G.shape
        return update, self.clock.ps_step_s(p, n, self.offload.full.cost(p, n), self.k), {
            "fallback_steps": 1, "bytes_on_wire": self.clock.ps_bytes(*G.shape, self.k)}


def _extra(path: AggregationPath, step: dict[str, Any]) -> dict[str, Any]:
    """The per-step counters worth a metrics.jsonl column."""
    extra = {"bytes_on_wire": step.get("bytes_on_wire", 0)}
    if "retransmissions" in step:
        extra["retransmissions"] = step["retransmissions"]
        extra["results_lost"] = step["results_lost"]
        extra["fallback_chunks"] = sum(step["fallback_chunks"].values())
    if "ps_retransmissions" in step:
        extra["ps_retransmissions"] = step["ps_retransmissions"]
    if path.via == "offload":
        extra["offload_fallback"] = step.get("fallback_steps", 0)
        extra["checks_failed"] = step.get("checks_failed", 0)
    return extra


def run_path(
    scenario: Scenario,
    path: AggregationPath,
    data: datasets.Dataset,
    device: torch.device,
    metrics: MetricsWriter,
    progress: bool = True,
) -> PathResult:
    """Train one model through one aggregation path."""
    w, t, n = scenario.workers, scenario.training, scenario.network
    torch.manual_seed(scenario.seed)
    model = models.build(scenario.data.model, data.image_shape, data.num_classes).to(device)
    attack = attacks.get(w.attack, **w.attack_params) if w.f > 0 else None
    byzantine = list(range(w.f))
    pool = WorkerPool(
        model,
        data,
        w.p,
        scenario.data.batch,
        seed=scenario.seed,
        byzantine=byzantine,
        data_attack=attack if attack is not None and attack.kind == "data" else None,
    )
    gradient_attack = attack if attack is not None and attack.kind == "gradient" else None
    byz_index = torch.tensor(byzantine, dtype=torch.long, device=device)
    attack_gen = torch.Generator().manual_seed(scenario.seed + 2)
    rule_params = (split_offload_params(path.params)[1] if path.via == "offload"
                   else path.params)
    rule = aggregators.get(path.rule, **{"f": w.f, **rule_params})
    warm_up(rule, w.p, device)
    ps = ParameterServer(
        model, rule, t.lr, t.momentum, t.weight_decay, t.milestones, t.gamma, t.nonfinite
    )
    agg = _Aggregation(scenario, path, ps)
    uplink = None
    if not n.recovery:  # what the up links lose stays lost, on every path
        uplink = UnreliableUplink(link_models(scenario)[0], n.k, scenario.seed)
    live = list(range(w.p))
    crash_worker, crash_step = (n.crash if n.crash else (-1, 0))
    totals: dict[str, Any] = {}
    modelled = 0.0  # seconds of modelled aggregation time so far
    honest = torch.ones(w.p, dtype=torch.bool)
    honest[byzantine] = False

    start = time.perf_counter()
    accuracy, test_loss, train_loss = float("nan"), float("nan"), float("nan")
    bar = tqdm(range(1, t.steps + 1), desc=f"{path.name:>14}", disable=not progress, leave=True)
    for step in bar:
        G, losses = pool.gradients()
        if gradient_attack is not None:
            G = gradient_attack(G, byz_index, attack_gen)
        extra: dict[str, Any] = {}
        if uplink is not None:
            G, delivery = uplink.send(G)
            add_stats(totals, {"packets_lost_unrecovered": delivery.lost,
                               "values_lost_unrecovered": delivery.values_lost})
            extra["packets_lost"] = delivery.lost
        if step == crash_step:
            live = [i for i in live if i != crash_worker]
            update, seconds, stats = agg.crash_step(G, crash_worker, live)
            agg.lease(live)
            stats["crashed_workers"] = 1
        else:
            update, seconds, stats = agg.step(G if len(live) == w.p else G[live])
        ps.apply(update)
        modelled += seconds
        add_stats(totals, stats)
        extra.update(_extra(path, stats))
        train_loss = float(losses.cpu()[honest].mean())
        record = {"path": path.name, "step": step, "train_loss": train_loss,
                  "lr": ps.optimizer.param_groups[0]["lr"], "modelled_s": modelled, **extra}
        if step % t.eval_every == 0 or step == t.steps:
            accuracy, test_loss = evaluate(model, data.x_test, data.y_test)
            record.update(test_accuracy=accuracy, test_loss=test_loss)
            bar.set_postfix(acc=f"{accuracy:.3f}")
        record["elapsed_s"] = time.perf_counter() - start
        metrics.write(record)
    elapsed = time.perf_counter() - start
    return PathResult(
        final_test_accuracy=accuracy,
        final_test_loss=test_loss,
        final_train_loss=train_loss,
        seconds_per_step=elapsed / t.steps,
        aggregate_seconds_per_step=ps.aggregate_seconds / t.steps,
        modelled_seconds_per_step=modelled / t.steps,
        nonfinite_rows=ps.nonfinite_rows,
        network=totals,
    )


def format_table(summary: dict[str, dict[str, Any]]) -> str:
    head = (f"{'path':<22}{'test acc':>10}{'test loss':>11}{'ms/step':>10}{'agg ms':>9}"
            f"{'model µs':>10}")
    lines = [head, "-" * len(head)]
    for name, r in summary.items():
        lines.append(
            f"{name:<22}{r['final_test_accuracy']:>10.4f}{r['final_test_loss']:>11.4f}"
            f"{1e3 * r['seconds_per_step']:>10.2f}{1e3 * r['aggregate_seconds_per_step']:>9.2f}"
            f"{1e6 * r['modelled_seconds_per_step']:>10.1f}"
        )
    return "\n".join(lines)


def run(scenario: Scenario, out: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run every path of ``scenario``; write the outputs; return the summary."""
    folder = output_dir(scenario, out)
    folder.mkdir(parents=True, exist_ok=True)
    device = pick_device(scenario.device)
    with (folder / "config.toml").open("wb") as fh:
        tomli_w.dump(to_dict(scenario), fh)
    data = datasets.load(
        scenario.data.dataset, scenario.data.root or None, scenario.data.download
    ).to(device)
    metrics = MetricsWriter(folder / "metrics.jsonl")
    summary: dict[str, Any] = {}
    try:
        for path in scenario.paths:
            summary[path.name] = run_path(scenario, path, data, device, metrics, progress).as_dict()
            (folder / "summary.json").write_text(json.dumps(summary, indent=2))
    finally:
        metrics.close()
    return summary


def capture_packets(scenario: Scenario, steps: int = 1, max_packets: int = 5000):
    """The wire-format packets of the first ``steps`` in-network aggregation steps of
    a scenario (real gradients, the scenario's links), at most ``max_packets``: what
    reached the switch and the RESULT packets it sent, in order. Returns (packets,
    the per-step AllreduceStats)."""
    w, t = scenario.workers, scenario.training
    device = pick_device(scenario.device)
    data = datasets.load(scenario.data.dataset, scenario.data.root, scenario.data.download)
    torch.manual_seed(scenario.seed)
    model = models.build(scenario.data.model, data.image_shape, data.num_classes).to(device)
    pool = WorkerPool(model, data, w.p, scenario.data.batch, seed=scenario.seed)
    ps = ParameterServer(model, aggregators.get("mean"), t.lr, t.momentum, t.weight_decay,
                         t.milestones, t.gamma, t.nonfinite)
    switch = build_switch(scenario, wire=True, capture=max_packets)
    all_stats = []
    for _ in range(steps):
        G, _ = pool.gradients()
        total, stats = switch.allreduce(G.detach().to("cpu", torch.float32).numpy())
        ps.apply(torch.from_numpy(total / w.p).to(device, torch.float32))
        all_stats.append(stats)
    return switch.captured(), all_stats
