"""The experiment runner: one scenario, several aggregation paths, same data and attack.

Every path trains its own copy of the model from the same initial weights, sees the
same minibatch stream and the same attack randomness, so differences between paths
come from the aggregation alone. A run repeats that for every seed of ``seeds``
(default: the one ``seed``); one (path, seed) pair is a *unit*, run in order or in
parallel processes (``jobs``). Each unit streams its metrics (one JSON object per
step, flushed), can checkpoint every ``training.checkpoint_every`` steps and resume
from there to the same numbers; ``summary.json`` gives per path the mean and sd over
the seeds. The folder layout and its safety rules are in :mod:`innet.runs`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import pickle
import re
import statistics
import time
from concurrent.futures import as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
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
from innet import aggregators, attacks, runs
from innet.config import AggregationPath, Scenario, ScenarioError, split_offload_params, to_dict
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
                         down_between=down, delay=n.delay, max_delay=n.max_delay)

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
        defences=params["defences"], quarantine=params["quarantine"],
        secret_buckets=params["secret_buckets"], secret_tol=params["secret_tol"], **fa_params)
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


@torch.no_grad()
def geometry(G: torch.Tensor, update: torch.Tensor, honest: torch.Tensor,
             coefficients: torch.Tensor | None = None) -> dict[str, float]:
    """The cosine structure of a step's rows (what decides which rows a subspace or
    distance rule keeps): mean pairwise cosine among honest rows, among Byzantine
    rows and across; each group's mean cosine to the honest mean; the update's cosine
    to the honest mean and its norm relative to it; for FA the share of the update
    its coefficients give the Byzantine rows (Σ_B |c_i|‖g_i‖ / Σ |c_i|‖g_i‖)."""
    X = G.detach().to("cpu", torch.float64)
    honest = honest.to(torch.bool)
    norms = torch.linalg.vector_norm(X, dim=1).clamp_min(1e-300)
    C = (X @ X.T) / norms[:, None] / norms[None, :]
    H, B = torch.nonzero(honest).flatten(), torch.nonzero(~honest).flatten()

    def mean_offdiag(rows, cols):
        block = C[rows][:, cols]
        if rows is cols:
            k = len(rows)
            return float((block.sum() - block.diagonal().sum()) / max(k * (k - 1), 1))
        return float(block.mean())

    m = X[H].mean(dim=0)
    m_norm = float(torch.linalg.vector_norm(m).clamp_min(1e-300))
    to_mean = (X @ m) / norms / m_norm
    u = update.detach().to("cpu", torch.float64)
    u_norm = float(torch.linalg.vector_norm(u))
    out = {"cos_honest": mean_offdiag(H, H), "cos_byzantine": mean_offdiag(B, B),
           "cos_cross": mean_offdiag(B, H), "cos_honest_to_mean": float(to_mean[H].mean()),
           "cos_byzantine_to_mean": float(to_mean[B].mean()),
           "cos_update_to_mean": float(u @ m) / max(u_norm * m_norm, 1e-300),
           "update_norm_ratio": u_norm / m_norm}
    if coefficients is not None and len(coefficients) == len(X):
        weight = coefficients.abs().to(torch.float64) * norms
        out["fa_byzantine_share"] = float(weight[B].sum() / weight.sum().clamp_min(1e-300))
    return {k: (v if math.isfinite(v) else None) for k, v in out.items()}


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

    def network_state(self) -> dict[str, Any]:
        """What of the aggregation changes from step to step: the emulated switch and
        links, the PS transport, the offload's secret and step (for checkpoints)."""
        off = self.offload
        return {"switch": self.switch, "transport": self.transport,
                "offload": None if off is None else (off._secret, off.step,
                                                     dict(off.quarantine_left))}

    def load_network_state(self, state: dict[str, Any]) -> None:
        self.switch, self.transport = state["switch"], state["transport"]
        if self.offload is not None:
            self.offload.switch = self.switch
            self.offload._secret, self.offload.step, self.offload.quarantine_left = state[
                "offload"]

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
        step["bytes_on_wire"] = self._wire_bytes(stats)
        return update, self.clock.switch_step_s(stats.round_log, self.k), step

    def _wire_bytes(self, stats) -> int:
        """Bytes an allreduce put on the wire: full packets, and the header-only
        packets of the exponent preamble."""
        hdr = stats.header_only_packets
        return ((stats.packets_up + stats.packets_down - hdr) * self.clock.packet_bytes(self.k)
                + hdr * self.clock.header_packet_bytes())

    def _offload(self, G):
        tick = time.perf_counter()
        total, ost = self.offload.aggregate(G)
        self.ps.aggregate_seconds += time.perf_counter() - tick
        step = {"fallback_steps": int(ost.fallback), "checks_failed": len(ost.checks_failed),
                "clamped_values": ost.clamped_values, "quarantined": len(ost.quarantined)}
        p, n = G.shape
        modelled = (self.clock.serialise_s(ost.sketch_bytes_per_worker)
                    + 2e-6 * self.clock.latency_us
                    + self.clock.host.seconds(self.offload.worker_cost(n))
                    + self.clock.control_plane.seconds(self.offload.control_plane_cost(p)))
        wire = G.shape[0] * ost.sketch_bytes_per_worker
        if ost.phase2 is not None:
            modelled += self.clock.switch_step_s(ost.phase2.round_log, self.k)
            step.update(ost.phase2.as_dict())
            wire += self._wire_bytes(ost.phase2)
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
        if step.get("late_packets"):
            extra["late_packets"] = step["late_packets"]
            extra["stale_results"] = step["stale_results"]
    if "ps_retransmissions" in step:
        extra["ps_retransmissions"] = step["ps_retransmissions"]
    if path.via == "offload":
        extra["offload_fallback"] = step.get("fallback_steps", 0)
        extra["checks_failed"] = step.get("checks_failed", 0)
        extra["quarantined"] = step.get("quarantined", 0)
    return extra


class _Trainer:
    """One unit of a run: one path, one seed. Builds the model, workers, attack and
    aggregation; :meth:`step` trains one step and returns its metrics record;
    :meth:`state` / :meth:`restore` capture everything a step depends on, so a unit
    resumed from a checkpoint continues bit for bit (on the CPU)."""

    aggregation_class = _Aggregation

    def __init__(self, scenario: Scenario, path: AggregationPath, data: datasets.Dataset,
                 device: torch.device):
        self.scenario, self.path = scenario, path
        w, t, n = scenario.workers, scenario.training, scenario.network
        torch.manual_seed(scenario.seed)
        self.model = models.build(scenario.data.model, data.image_shape,
                                  data.num_classes).to(device)
        attack = attacks.get(w.attack, **w.attack_params) if w.f > 0 else None
        self.byzantine = list(range(w.f))
        self.pool = WorkerPool(
            self.model, data, w.p, scenario.data.batch, seed=scenario.seed,
            byzantine=self.byzantine,
            data_attack=attack if attack is not None and attack.kind == "data" else None,
        )
        self.data = data
        self.gradient_attack = (attack if attack is not None and attack.kind == "gradient"
                                else None)
        self.byz_index = torch.tensor(self.byzantine, dtype=torch.long, device=device)
        self.attack_gen = torch.Generator().manual_seed(scenario.seed + 2)
        rule_params = (split_offload_params(path.params)[1] if path.via == "offload"
                       else path.params)
        if "bucketing" in path.rule.split("+")[:-1]:  # its permutations follow the seed
            rule_params = {"seed": scenario.seed, **rule_params}
        self.rule = aggregators.get(path.rule, **{"f": w.f, **rule_params})
        warm_up(self.rule, w.p, device)
        self.ps = ParameterServer(self.model, self.rule, t.lr, t.momentum, t.weight_decay,
                                  t.milestones, t.gamma, t.nonfinite)
        self.agg = self.aggregation_class(scenario, path, self.ps)
        self.uplink = None
        if not n.recovery:  # what the up links lose stays lost, on every path
            self.uplink = UnreliableUplink(link_models(scenario)[0], n.k, scenario.seed)
        self.live = list(range(w.p))
        self.crash_worker, self.crash_step = (n.crash if n.crash else (-1, 0))
        self.totals: dict[str, Any] = {}
        self.modelled = 0.0  # seconds of modelled aggregation time so far
        self.honest = torch.ones(w.p, dtype=torch.bool)
        self.honest[self.byzantine] = False
        self.done = 0  # steps taken
        self.elapsed = 0.0  # wall seconds spent in steps (over every session)
        self.accuracy = self.test_loss = self.train_loss = float("nan")

    def step(self) -> dict[str, Any]:
        tick = time.perf_counter()
        w, t = self.scenario.workers, self.scenario.training
        step = self.done + 1
        G, losses = self.gradients()
        if self.gradient_attack is not None:
            G = self.gradient_attack(G, self.byz_index, self.attack_gen)
        extra: dict[str, Any] = {}
        if self.uplink is not None:
            G, delivery = self.uplink.send(G)
            add_stats(self.totals, {"packets_lost_unrecovered": delivery.lost,
                                    "values_lost_unrecovered": delivery.values_lost})
            extra["packets_lost"] = delivery.lost
        if step == self.crash_step:
            self.live = [i for i in self.live if i != self.crash_worker]
            update, seconds, stats = self.agg.crash_step(G, self.crash_worker, self.live)
            self.agg.lease(self.live)
            stats["crashed_workers"] = 1
            extra["crashed_worker"] = self.crash_worker
        else:
            update, seconds, stats = self.agg.step(G if len(self.live) == w.p else G[self.live])
        update = self.share_update(update)
        self.ps.apply(update)
        self.modelled += seconds
        add_stats(self.totals, stats)
        extra.update(_extra(self.path, stats))
        reporting = self.honest.clone()  # the honest workers still alive
        reporting[[i for i in range(w.p) if i not in self.live]] = False
        self.train_loss = float(losses.cpu()[reporting].mean())
        record = {"path": self.path.name, "seed": self.scenario.seed, "step": step,
                  "train_loss": self.train_loss, "lr": self.ps.optimizer.param_groups[0]["lr"],
                  "modelled_s": self.modelled, **extra}
        if step % t.eval_every == 0 or step == t.steps:
            self.accuracy, self.test_loss = evaluate(self.model, self.data.x_test,
                                                     self.data.y_test)
            record.update(test_accuracy=self.accuracy, test_loss=self.test_loss)
        if ((step == 1 or "test_accuracy" in record) and self.byzantine
                and len(self.live) == w.p):  # step 1: every path sees the same rows
            record.update(geometry(G, update, self.honest, self.coefficients()))
        self.done = step
        self.elapsed += time.perf_counter() - tick
        record["elapsed_s"] = self.elapsed
        return record

    def gradients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """This step's G (p, n) and the workers' losses (p,): here all computed in this
        process; ``innet launch`` gathers them from worker processes."""
        return self.pool.gradients()

    def share_update(self, update: torch.Tensor) -> torch.Tensor:
        """The update every replica applies (one process: nothing to share)."""
        return update

    def coefficients(self) -> torch.Tensor | None:
        """FA's coefficients c of the step just taken (the update is G·c), where the
        path runs FA: the offload's control plane, or the PS rule."""
        if self.agg.offload is not None:
            c = self.agg.offload.last_c
            return None if c is None else torch.from_numpy(np.asarray(c))
        last = getattr(self.rule, "last", None)
        return getattr(last, "c", None)

    def result(self) -> PathResult:
        steps = max(self.done, 1)
        return PathResult(
            final_test_accuracy=self.accuracy, final_test_loss=self.test_loss,
            final_train_loss=self.train_loss, seconds_per_step=self.elapsed / steps,
            aggregate_seconds_per_step=self.ps.aggregate_seconds / steps,
            modelled_seconds_per_step=self.modelled / steps,
            nonfinite_rows=self.ps.nonfinite_rows, network=self.totals)

    # -- checkpoints ----------------------------------------------------------------
    _SCALARS = ("done", "elapsed", "accuracy", "test_loss", "train_loss", "modelled",
                "totals", "live")

    def state(self) -> dict[str, Any]:
        """Everything the next step depends on (the aggregation's emulated links,
        switch registers and transports are pickled whole)."""
        sampler = self.pool.sampler
        return {
            "scalars": {k: getattr(self, k) for k in self._SCALARS},
            "model": self.model.state_dict(),
            "optimizer": self.ps.optimizer.state_dict(),
            "scheduler": self.ps.scheduler.state_dict(),
            "ps": (self.ps.nonfinite_rows, self.ps.aggregate_seconds),
            "rule": self.rule.state(),
            "sampler": (sampler.gen.get_state(), sampler.order, sampler.pos),
            "generators": (self.pool.attack_gen.get_state(), self.attack_gen.get_state(),
                           torch.get_rng_state()),
            "uplink": None if self.uplink is None else [ln.state.copy()
                                                         for ln in self.uplink.links],
            "aggregation": pickle.dumps(self.agg.network_state()),
        }

    def restore(self, state: dict[str, Any]) -> None:
        for k, v in state["scalars"].items():
            setattr(self, k, v)
        if len(self.live) != self.scenario.workers.p:  # a crash happened before the save
            self.agg.lease(self.live)
        self.model.load_state_dict(state["model"])
        self.ps.optimizer.load_state_dict(state["optimizer"])
        self.ps.scheduler.load_state_dict(state["scheduler"])
        self.ps.nonfinite_rows, self.ps.aggregate_seconds = state["ps"]
        self.rule.load_state(state["rule"])
        sampler = self.pool.sampler
        gen_state, sampler.order, sampler.pos = state["sampler"]
        sampler.gen.set_state(gen_state)
        pool_gen, attack_gen, global_gen = state["generators"]
        self.pool.attack_gen.set_state(pool_gen)
        self.attack_gen.set_state(attack_gen)
        torch.set_rng_state(global_gen)
        if self.uplink is not None:
            for link, row in zip(self.uplink.links, state["uplink"]):
                link.state[:] = row
        self.agg.load_network_state(pickle.loads(state["aggregation"]))


@dataclass(frozen=True)
class Unit:
    """One path trained with one seed: the grain of a run's progress and parallelism."""

    index: int  #: the path's index in the scenario
    seed: int

    def key(self, scenario: Scenario) -> str:
        name = re.sub(r"[^A-Za-z0-9_.+-]", "_", scenario.paths[self.index].name)
        return f"{self.index:02d}-{name}-s{self.seed}"


def seeds_of(scenario: Scenario) -> list[int]:
    return list(scenario.seeds) or [scenario.seed]


def units_of(scenario: Scenario) -> list[Unit]:
    return [Unit(i, seed) for i in range(len(scenario.paths)) for seed in seeds_of(scenario)]


def load_data(scenario: Scenario, device: torch.device) -> datasets.Dataset:
    """The scenario's dataset on ``device``; a dataset that cannot be loaded here is a
    :class:`ScenarioError` naming ``data.dataset``."""
    try:
        data = datasets.load(scenario.data.dataset, scenario.data.root or None,
                             scenario.data.download)
    except datasets.DatasetError as err:
        raise ScenarioError(f"data.dataset: {err}") from None
    return data.to(device)


def run_unit(scenario: Scenario, unit: Unit, folder: Path, data: datasets.Dataset | None = None,
             progress: bool = True, resume: bool = False,
             trainer_class: type | None = None) -> dict[str, Any]:
    """Train one unit into ``folder/units/``: its metrics stream to ``<unit>.jsonl``
    (flushed per line), a checkpoint every ``training.checkpoint_every`` steps, and
    ``<unit>.result.json`` when it is done; returns the result. With ``resume`` it
    continues from its checkpoint (or from the start if it has none)."""
    trainer_class = trainer_class or _Trainer
    key = unit.key(scenario)
    units = folder / "units"
    units.mkdir(exist_ok=True)
    part, ckpt = units / f"{key}.jsonl", units / f"{key}.ckpt"
    s = dataclasses.replace(scenario, seed=unit.seed, seeds=[])
    path = s.paths[unit.index]
    device = pick_device(s.device)
    data = load_data(s, device) if data is None else data
    trainer = trainer_class(s, path, data, device)
    offset = 0
    if resume and ckpt.exists():
        state = torch.load(ckpt, weights_only=False)
        trainer.restore(state["trainer"])
        offset = state["metrics_offset"]
    every, steps = s.training.checkpoint_every, s.training.steps
    desc = f"{path.name:>14}" + (f" s{unit.seed}" if len(seeds_of(scenario)) > 1 else "")
    with part.open("r+b" if part.exists() else "wb") as fh:
        fh.truncate(offset)  # lines written after the checkpoint are written again
        fh.seek(offset)
        bar = tqdm(range(trainer.done + 1, steps + 1), desc=desc, disable=not progress,
                   leave=True)
        for step in bar:
            record = trainer.step()
            fh.write((json.dumps(record) + "\n").encode())
            fh.flush()
            if "test_accuracy" in record:
                bar.set_postfix(acc=f"{record['test_accuracy']:.3f}")
            if every and step % every == 0 and step < steps:
                runs.atomic_write(ckpt, _checkpoint_bytes(trainer, fh.tell()))
    result = {**trainer.result().as_dict(), "seed": unit.seed}
    runs.write_json(units / f"{key}.result.json", result)
    ckpt.unlink(missing_ok=True)
    return result


def _checkpoint_bytes(trainer: _Trainer, offset: int) -> bytes:
    buffer = io.BytesIO()
    torch.save({"trainer": trainer.state(), "metrics_offset": offset}, buffer)
    return buffer.getvalue()


def format_table(summary: dict[str, dict[str, Any]]) -> str:
    multi = any(r.get("n_seeds", 1) > 1 for r in summary.values())
    acc_head, w = ("test acc ± sd", 17) if multi else ("test acc", 10)
    head = (f"{'path':<22}{acc_head:>{w}}{'test loss':>11}{'ms/step':>10}"
            f"{'agg ms':>9}{'model µs':>10}")
    lines = [head, "-" * len(head)]
    for name, r in summary.items():
        acc = (f"{r['final_test_accuracy']:.4f} ± {r.get('final_test_accuracy_sd', 0):.4f}"
               if multi else f"{r['final_test_accuracy']:.4f}")
        lines.append(
            f"{name:<22}{acc:>{w}}{r['final_test_loss']:>11.4g}"
            f"{1e3 * r['seconds_per_step']:>10.2f}{1e3 * r['aggregate_seconds_per_step']:>9.2f}"
            f"{1e6 * r['modelled_seconds_per_step']:>10.1f}"
        )
    return "\n".join(lines)


def _sd(values: list[float]) -> float:
    """Sample standard deviation (0 for a single value)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(scenario: Scenario, results: dict[Unit, dict[str, Any]]) -> dict[str, Any]:
    """Per path, over its finished seeds: means of the final metrics and times, their
    sample sd, the per-seed values; network counters summed over the seeds."""
    summary: dict[str, Any] = {}
    for i, path in enumerate(scenario.paths):
        per = {u.seed: r for u, r in sorted(results.items(), key=lambda x: x[0].seed)
               if u.index == i}
        if not per:
            continue
        rows = list(per.values())
        entry: dict[str, Any] = {}
        for key in ("final_test_accuracy", "final_test_loss", "final_train_loss"):
            values = [r[key] for r in rows]
            entry[key] = statistics.fmean(values)
            entry[f"{key}_sd"] = _sd(values)
            entry[f"{key}_per_seed"] = values
        for key in ("seconds_per_step", "aggregate_seconds_per_step",
                    "modelled_seconds_per_step"):
            entry[key] = statistics.fmean(r[key] for r in rows)
        entry["nonfinite_rows"] = sum(r["nonfinite_rows"] for r in rows)
        network: dict[str, Any] = {}
        for r in rows:
            add_stats(network, r.get("network") or {})
        entry["network"] = network
        entry["seeds"] = list(per)
        entry["n_seeds"] = len(per)
        missing = [s for s in seeds_of(scenario) if s not in per]
        if missing:
            entry["seeds_missing"] = missing
        entry["per_seed"] = {str(seed): r for seed, r in per.items()}
        summary[path.name] = entry
    return summary


def _gather(scenario: Scenario, folder: Path, units: list[Unit]) -> dict[Unit, dict[str, Any]]:
    """The finished units' results; metrics.jsonl and summary.json rebuilt from them."""
    results = {}
    for u in units:
        file = folder / "units" / f"{u.key(scenario)}.result.json"
        if file.exists():
            results[u] = runs.read_json(file, "a unit's result")
    lines = []
    for u in units:
        if u in results:
            part = folder / "units" / f"{u.key(scenario)}.jsonl"
            lines.append(part.read_bytes())
    runs.atomic_write(folder / "metrics.jsonl", b"".join(lines))
    runs.atomic_write(folder / "metrics.csv", _csv(b"".join(lines)))
    runs.write_json(folder / "summary.json", summarise(scenario, results))
    return results


def _csv(jsonl: bytes) -> str:
    """metrics.jsonl as CSV: one column per key any line has, empty where a line lacks it."""
    records = [json.loads(line) for line in jsonl.splitlines() if line.strip()]
    columns = list(dict.fromkeys(k for r in records for k in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()


def run(scenario: Scenario, out: str | None = None, progress: bool = True, jobs: int = 1,
        resume: bool = False, force: bool = False) -> dict[str, Any]:
    """Run every path of ``scenario`` for every seed into its folder (see
    :mod:`innet.runs`); return the summary. ``jobs`` > 1 runs units (paths × seeds)
    in parallel processes. ``resume`` continues a killed run of the same settings;
    ``force`` replaces what the folder held."""
    if jobs < 1:
        raise ScenarioError(f"--jobs: must be >= 1, got {jobs}")
    try:  # a device this machine lacks fails before anything is written
        device = pick_device(scenario.device)
    except ValueError as err:
        raise ScenarioError(str(err)) from None
    data = load_data(scenario, device)  # likewise a dataset that cannot be loaded
    folder = runs.usable_folder(output_dir(scenario, out))
    with runs.locked(folder):
        resuming = runs.claim_folder(folder, scenario, resume, force)
        units = units_of(scenario)
        # run.json first: a run killed between the two writes resumes and rewrites the
        # config (the same settings, so the same text)
        if not resuming:
            runs.write_json(folder / "run.json", {
                "settings_hash": runs.settings_hash(scenario),
                "units": [u.key(scenario) for u in units]})
        runs.atomic_write(folder / "config.toml", tomli_w.dumps(to_dict(scenario)))
        done = _gather(scenario, folder, units)
        todo = [u for u in units if u not in done]
        if jobs == 1 or len(todo) <= 1:
            for u in todo:
                run_unit(scenario, u, folder, data, progress, resume=resuming)
                _gather(scenario, folder, units)
        else:
            from innet.parallel import process_pool

            with process_pool(min(jobs, len(todo))) as pool:
                futures = [pool.submit(_run_unit_process, to_dict(scenario), u, str(folder),
                                       resuming) for u in todo]
                for future in tqdm(as_completed(futures), total=len(futures), desc="units",
                                   unit="unit", disable=not progress):
                    future.result()  # re-raise a unit's error here
                    _gather(scenario, folder, units)
        summary = runs.read_json(folder / "summary.json", "summary.json")
    return summary


def _run_unit_process(data: dict[str, Any], unit: Unit, folder: str, resume: bool):
    from innet.config import from_dict

    return run_unit(from_dict(data), unit, Path(folder), progress=False, resume=resume)


def capture_packets(scenario: Scenario, steps: int = 1, max_packets: int = 5000):
    """The wire-format packets of the first ``steps`` in-network aggregation steps of
    a scenario (real gradients, the scenario's links), at most ``max_packets``: what
    reached the switch and the RESULT packets it sent, in order. Returns (packets,
    the per-step AllreduceStats)."""
    w, t = scenario.workers, scenario.training
    device = pick_device(scenario.device)
    data = load_data(scenario, torch.device("cpu"))
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
