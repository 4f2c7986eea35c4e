"""``innet launch``: a scenario on real processes — the switch emulator as a UDP server
process, the PS and p workers as torch.distributed ranks started by torchrun.

    innet launch scenarios/switch_loss.toml --set workers.p=4 --set training.steps=20

Rank 0 is the parameter server: it runs the same trainer as ``innet run`` (model,
optimizer, schedule, evaluation, metrics, run folder), but the gradients come from the
worker ranks (``dist.gather``) and the update it applies goes to every replica
(``dist.broadcast``). Ranks 1 … p are the workers: each owns a model replica and
computes its own gradient on its own minibatch (the same sampling stream as ``innet
run``, so the rows are the same). On a ``via = "switch"`` path each worker streams its
row as real UDP packets to the switch server with the worker protocol's state machine
(:mod:`host.stream`), chunks no switch result came back for go to the PS fallback
(the union of every worker's, summed in float from the rows rank 0 holds), and worker
1's sum reaches rank 0. On a ``ps:*`` path the rows go to rank 0, which runs the rule.
Gradient attacks are applied by rank 0 to the gathered rows, as in ``innet run``, and
the attacked rows go back to the workers that send them (the omniscient attacker the
attacks assume). The run folder has the same form as ``innet run``'s, plus
``units/<unit>.processes.json`` with every rank's counters.

Faults are real: rank 0 checkpoints the unit after every step; when a rank dies
(``kill -9``) torchrun stops and restarts every rank (``--max-restarts=p``), this
process records which rank failed (``units/<unit>.failures.json``, from torchrun's
log), and rank 0 of the next attempt resumes from the checkpoint with that worker left
out: the control plane re-leases the switch job for the p − 1 others, the restarted
process of the failed rank holds no data, and the step is recorded as the crash step
(``crashed_worker``, ``crashed_workers``). A switch server that dies sends every later
step to the PS fallback.

Not in launch (yet): offload paths, the emulated crash and non-recovering links
(``network.crash``, ``network.recovery = false``), GPUs/NCCL; each is refused by name.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import tomli_w
import torch

from innet import config, runs
from innet.config import Scenario, to_dict
from innet.errors import ScenarioError

UNIT_TIMEOUT_S = 3600.0


def check_launchable(s: Scenario) -> None:
    """What launch does not run, refused by the key that asks for it."""
    n = s.network
    for i, path in enumerate(s.paths):
        if path.via not in ("ps", "switch"):
            raise ScenarioError(f"paths[{i}].via: innet launch runs ps and switch paths, not "
                                f"{path.via!r} (use innet run)")
    if n.crash:
        raise ScenarioError("network.crash: innet launch kills real processes instead; "
                            "leave it unset")
    if not n.recovery:
        raise ScenarioError("network.recovery: innet launch needs recovery = true")
    if n.links or n.lossy_workers or n.burst or n.failed_port:
        raise ScenarioError("network.links/lossy_workers/burst/failed_port: innet launch "
                            "applies one up and one down loss model to every link")
    if s.device not in ("auto", "cpu"):
        raise ScenarioError(f"device: innet launch runs on the CPU (gloo) here, got {s.device!r}")
    if s.workers.p > 32:
        raise ScenarioError(f"workers.p: the switch bitmap holds 32 workers, got {s.workers.p}")


# -- the CLI side -----------------------------------------------------------------------
def launch(scenario: Scenario, out: str, progress: bool = True, resume: bool = False,
           force: bool = False, pcap: str | None = None,
           pcap_packets: int = 20_000) -> dict[str, Any]:
    """Run every unit of ``scenario`` on a switch server process and p + 1 torchrun
    ranks; returns the summary. Nothing is left running, whatever happens."""
    from innet import experiment

    check_launchable(scenario)
    experiment.load_data(scenario, torch.device("cpu"))  # fail early, write nothing
    folder = runs.usable_folder(Path(out))
    with _terminable():
        return _launch(scenario, folder, progress, resume, force, pcap, pcap_packets)


class Terminated(SystemExit):
    """SIGTERM or SIGHUP reached ``innet launch``: its processes were stopped."""


@contextlib.contextmanager
def _terminable():
    """SIGTERM / SIGHUP unwind the launch like Ctrl-C, so that the switch server and
    torchrun (in sessions of their own, out of the signal's reach) are stopped too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        raise Terminated(128 + signum)

    before = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _launch(scenario, folder, progress, resume, force, pcap, pcap_packets):
    from innet import experiment

    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}
    with runs.locked(folder):
        resuming = runs.claim_folder(folder, scenario, resume, force)
        units = experiment.units_of(scenario)
        if not resuming:
            runs.write_json(folder / "run.json", {
                "settings_hash": runs.settings_hash(scenario),
                "units": [u.key(scenario) for u in units], "launch": True})
        runs.atomic_write(folder / "config.toml", tomli_w.dumps(to_dict(scenario)))
        done = experiment._gather(scenario, folder, units)
        todo = [u for u in units if u not in done]
        capture = ["--pcap", str(Path(pcap).resolve()), "--pcap-packets",
                   str(pcap_packets)] if pcap else []
        server = subprocess.Popen(
            [sys.executable, "-m", "innet", "switch", "serve", "--port", "0", "-k",
             str(scenario.network.k), *capture], stdout=subprocess.PIPE, text=True, env=env,
            start_new_session=True)
        info: dict = {}
        try:
            info = json.loads(server.stdout.readline() or "{}")
            if "data" not in info:
                raise RuntimeError("the switch server did not start")
            data, control = info["data"], info["control"]
            for u in todo:
                _run_unit(scenario, u, folder, data, control, env, progress, resuming)
                experiment._gather(scenario, folder, units)
        finally:
            _shut_down(server, info)
        return runs.read_json(folder / "summary.json", "summary.json")


#: torchrun's log line for the first rank of a worker group that failed
FAILED = re.compile(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+)")
#: lines of a rank's stderr that say why it died (Python, C++, glibc, Numba)
CAUSE = re.compile(r"Fatal Python error|terminate called|what\(\)|Terminating|Aborted"
                   r"|double free|corrupted|Error:|Traceback")


def _run_unit(scenario, unit, folder, data, control, env, progress, resume=False) -> None:
    """One unit on p + 1 torchrun ranks. torchrun restarts every rank when one fails
    (its only recovery on one node; up to p times); this process reads torchrun's log
    as it comes, records each failed rank in ``units/<unit>.failures.json``, and rank 0
    of the next attempt resumes from the unit's last checkpoint without the failed
    worker (the control plane re-leases the job for the rest)."""
    p = scenario.workers.p
    key = unit.key(scenario)
    (folder / "units").mkdir(exist_ok=True)
    failures_file = folder / "units" / f"{key}.failures.json"
    failures: list[dict] = []
    runs.write_json(failures_file, failures)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={p + 1}", f"--max-restarts={p}", "-m", "innet.launch",
           "--folder", str(folder), "--unit", str(unit.index), "--seed", str(unit.seed),
           "--data", f"{data[0]}:{data[1]}", "--control", f"{control[0]}:{control[1]}"]
    if not progress:
        cmd.append("--no-progress")
    if resume:
        cmd.append("--resume")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stderr=subprocess.PIPE,
                            text=True)
    lines: list[str] = []
    tick = time.monotonic()

    def read() -> None:
        causes: list[str] = []  # what the ranks said before torchrun saw one fail
        for line in proc.stderr:
            lines.append(line)
            if progress:
                sys.stderr.write(line)
            if CAUSE.search(line):
                causes = (causes + [line.strip()])[-6:]
            m = FAILED.search(line)
            if m:
                failures.append({"rank": int(m[2]), "exitcode": int(m[1]),
                                 "at_s": round(time.monotonic() - tick, 3),
                                 "said": causes})
                causes = []
                runs.write_json(failures_file, failures)
                sys.stderr.write(f"innet launch: rank {m[2]} of unit {key} failed (exit code "
                                 f"{m[1]}); torchrun restarts the ranks\n")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        proc.wait(timeout=UNIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise RuntimeError(f"launch: unit {key} still running after {UNIT_TIMEOUT_S:.0f} s; "
                           "stopped") from None
    finally:
        _stop(proc)
        reader.join(timeout=10)
    err = "".join(lines)
    # every rank's stderr (torchrun's too), kept whole beside the unit's metrics
    log = folder / f"{key}.stderr.log"
    runs.atomic_write(log, err)
    if proc.returncode != 0:
        failed = [line for line in err.splitlines() if "rank" in line and ("exitcode" in line
                                                                            or "Error" in line)]
        cause = [line for line in err.splitlines() if CAUSE.search(line)]
        tail = "\n".join(err.strip().splitlines()[-15:])
        raise RuntimeError(f"launch: unit {key} failed (torchrun exit {proc.returncode}); "
                           f"{failed[0].strip() if failed else ''}\n"
                           + ("\n".join(cause[:8]) + "\n" if cause else "")
                           + f"{tail}\n(every rank's stderr: {log})")


def _shut_down(server: subprocess.Popen, info: dict) -> None:
    """Ask the switch server to exit (it writes its capture), then make sure it did."""
    from emulator.server import request

    if server.poll() is None and "control" in info:
        try:
            request(tuple(info["control"]), {"op": "shutdown"}, timeout=1.0, retries=2)
            server.wait(timeout=30)
        except (TimeoutError, RuntimeError, subprocess.TimeoutExpired, OSError):
            pass
    _stop(server)


def _stop(proc: subprocess.Popen) -> None:
    """Kill a process group we started and reap it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


# -- the rank side ----------------------------------------------------------------------
def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


#: how long a rank that lost a peer waits for torchrun to stop it (so that the failed
#: rank is the one torchrun reports, not a survivor that gave up first)
PEER_LOST_WAIT_S = 60.0


def rank_main(argv: list[str] | None = None) -> int:
    import torch.distributed as dist

    ap = argparse.ArgumentParser(prog="innet.launch")
    ap.add_argument("--folder", required=True)
    ap.add_argument("--unit", type=int, required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--control", required=True)
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--resume", action="store_true", help="continue from a checkpoint")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    timeout = datetime.timedelta(seconds=UNIT_TIMEOUT_S)
    # torchrun's store outlives a restart, and so do the keys the previous attempt's
    # ranks wrote (gloo then dials their dead addresses): each attempt has its own prefix
    store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
    dist.init_process_group("gloo", store=dist.PrefixStore(f"innet/attempt{attempt}", store),
                            rank=rank, world_size=world, timeout=timeout)
    try:
        scenario = config.load(Path(args.folder) / "config.toml")
        s = dataclasses.replace(scenario, seed=args.seed, seeds=[])
        plan = [_plan(scenario, args, attempt, world) if rank == 0 else None]
        dist.broadcast_object_list(plan, src=0)
        plan = plan[0]
        members = [0] + [1 + w for w in plan["alive"]]
        # every rank joins the new group (torch.distributed wants all); a failed worker's
        # rank, started again by torchrun, holds no data and waits for the end
        group = dist.new_group(members) if len(members) < world else None
        if not plan["finished"] and rank in members:
            try:
                if rank == 0:
                    _ps_rank(scenario, s, args, plan, group)
                else:
                    _worker_rank(s, args, plan, group)
            except RuntimeError as err:
                if _peer_lost(err):  # torchrun stops every rank and starts them again
                    time.sleep(PEER_LOST_WAIT_S)
                raise
        # leave together: a rank that tears its gloo pairs down while a peer's I/O
        # thread still reads from them makes that peer abort (SIGABRT) at exit
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


def _peer_lost(err: BaseException) -> bool:
    """Whether a collective failed because another rank went away."""
    text = str(err)
    return any(s in text for s in ("Connection closed by peer", "Connection reset by peer",
                                   "Broken pipe", "Connection refused", "Read error",
                                   "Timed out waiting"))


def _plan(scenario: Scenario, args, attempt: int, world: int) -> dict[str, Any]:
    """Rank 0's plan for this attempt of the unit: which workers are alive (every rank
    torchrun reported failed in an earlier attempt is not), which one failed last (the
    trainer records its crash at the step it resumes from), and whether to resume."""
    from innet import experiment

    units = Path(args.folder) / "units"
    key = experiment.Unit(args.unit, args.seed).key(scenario)
    failures: list[dict] = []
    if attempt:  # the launch process writes the failure as torchrun logs it
        deadline = time.monotonic() + 30.0
        while len(failures) < attempt and time.monotonic() < deadline:
            time.sleep(0.05)
            failures = runs.read_json(units / f"{key}.failures.json", "failures")
        if len(failures) < attempt:
            raise RuntimeError(f"attempt {attempt} of unit {key}: torchrun restarted the ranks "
                               "but no failed rank was recorded")
        failures = failures[:attempt]
    dead = sorted({f["rank"] - 1 for f in failures if f["rank"] > 0})
    before = {f["rank"] - 1 for f in failures[:-1] if f["rank"] > 0}
    alive = [w for w in range(world - 1) if w not in dead]
    if not alive:
        raise RuntimeError(f"unit {key}: every worker rank has failed ({failures})")
    last = failures[-1]["rank"] - 1 if failures else -1
    return {"attempt": attempt, "alive": alive, "dead": dead, "failures": failures,
            "crashed": last if last >= 0 and last not in before else None,
            "resume": bool(attempt or args.resume) and (units / f"{key}.ckpt").exists(),
            "finished": bool(attempt) and (units / f"{key}.result.json").exists()}


def _ps_rank(scenario: Scenario, s: Scenario, args, plan: dict, group) -> None:
    import torch.distributed as dist

    from emulator.server import request
    from innet import experiment

    alive = plan["alive"]
    addresses: list = [None] * (len(alive) + 1)
    dist.gather_object(None, addresses, dst=0, group=group)
    aggregation_class, trainer_class = _launch_classes()
    aggregation_class.addresses = dict(zip(alive, addresses[1:]))
    aggregation_class.alive = alive
    aggregation_class.control = _address(args.control)
    trainer_class.plan, trainer_class.group = plan, group
    aggregation_class.lease_server(s, alive)
    dist.barrier(group=group)
    unit = experiment.Unit(args.unit, args.seed)
    # a checkpoint after every step: a failed rank costs the step it was in
    every = dataclasses.replace(scenario, training=dataclasses.replace(
        scenario.training, checkpoint_every=1))
    experiment.run_unit(every, unit, Path(args.folder), progress=not args.no_progress,
                        resume=plan["resume"], trainer_class=trainer_class)
    counters: list = [None] * (len(alive) + 1)
    dist.gather_object({"rank": 0, "role": "ps"}, counters, dst=0, group=group)
    try:
        counters[0]["switch_server"] = request(_address(args.control), {"op": "status"},
                                               timeout=0.5, retries=2)
    except TimeoutError:
        counters[0]["switch_server"] = "not answering (killed?)"
    runs.write_json(Path(args.folder) / "units" / f"{unit.key(scenario)}.processes.json",
                    {"ranks": counters, "attempts": plan["attempt"] + 1,
                     "failures": plan["failures"], "dead_workers": plan["dead"]})


def _worker_rank(s: Scenario, args, plan: dict, group) -> None:
    import torch.distributed as dist

    from host import data as datasets
    from host import models
    from host.ps import ParameterServer
    from host.stream import StreamStats, StreamWorker, UdpTransport, allreduce
    from host.worker import WorkerPool
    from innet import aggregators, attacks

    rank = dist.get_rank()
    i = rank - 1  # the worker (its data, its attack); its place in the job:
    alive = plan["alive"]
    j, p = alive.index(i), len(alive)
    first = 1 + alive[0]  # the rank whose sum reaches rank 0
    w, t, n = s.workers, s.training, s.network
    path = s.paths[args.unit]
    data = datasets.load(s.data.dataset, s.data.root or None, s.data.download)
    torch.manual_seed(s.seed)  # the same initial model as rank 0's
    model = models.build(s.data.model, data.image_shape, data.num_classes)
    attack = attacks.get(w.attack, **w.attack_params) if w.f > 0 else None
    pool = WorkerPool(model, data, w.p, s.data.batch, seed=s.seed, byzantine=list(range(w.f)),
                      data_attack=attack if attack is not None and attack.kind == "data"
                      else None)
    ps = ParameterServer(model, aggregators.get("mean"), t.lr, t.momentum, t.weight_decay,
                         t.milestones, t.gamma, t.nonfinite)
    transport = UdpTransport(_address(args.data), n.k)
    # compile (or load from Numba's cache) the quantiser's kernels before the first
    # step, so no worker is seconds late to it and the others' timeouts run out
    StreamWorker(j, p, n.k, n.pool_size).start(np.zeros(2 * n.k, np.float32), 0, 0.0)
    dist.gather_object(list(transport.address), None, dst=0, group=group)
    dist.barrier(group=group)
    start = 1
    if plan["resume"]:  # rank 0 restored the unit's checkpoint: continue from it
        box: list = [None]
        dist.broadcast_object_list(box, src=0, group=group)
        state = box[0]
        model.load_state_dict(state["model"])
        ps.optimizer.load_state_dict(state["optimizer"])
        ps.scheduler.load_state_dict(state["scheduler"])
        gen_state, pool.sampler.order, pool.sampler.pos = state["sampler"]
        pool.sampler.gen.set_state(gen_state)
        pool.attack_gen.set_state(state["pool_gen"])
        start = state["done"] + 1
    # the real clock's retransmission timer: the scenario's timeout_us models a rack
    # (1 ms by default); processes sharing a few cores need SwitchML's 10 ms at least
    machine = StreamWorker(j, p, n.k, n.pool_size, timeout=max(0.010, n.timeout_us * 1e-6),
                           max_timeout=0.5, max_retries=n.max_retries)
    totals = {"packets_sent": 0, "retransmissions": 0, "results_taken": 0,
              "stale_results": 0, "timeouts": 0, "fallback_chunks": 0, "stream_s": 0.0}
    size = sum(q.numel() for q in model.parameters())
    switch_down = False  # decided by every rank alike, from the fallback union
    for step in range(start, t.steps + 1):
        g, loss = pool.gradient_of(i)
        dist.gather(torch.cat([g.detach().float(), loss.detach().float().reshape(1)]), None,
                    dst=0, group=group)
        if path.via == "switch":
            row = torch.empty(size)
            dist.scatter(row, None, src=0, group=group)
            if switch_down:  # the switch stopped answering: straight to the PS fallback
                C = -(-size // n.k)
                total, fallback = np.zeros(size), np.ones(C, bool)
                stats = StreamStats()
            else:
                total, fallback, stats = allreduce(machine, transport, row.numpy(), step)
            flags = torch.from_numpy(fallback.astype(np.int32))
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
            out = torch.from_numpy(total) if j == 0 else torch.empty(size, dtype=torch.float64)
            dist.broadcast(out, src=first, group=group)
            mine = {k: getattr(stats, k) for k in totals if hasattr(stats, k)}
            mine["stream_s"] = stats.wall_s
            dist.gather_object(mine, None, dst=0, group=group)
            for k, v in mine.items():
                totals[k] += v
            alive_flag = torch.zeros(1, dtype=torch.int32)
            dist.broadcast(alive_flag, src=0, group=group)  # the PS asked the control channel
            switch_down = not bool(alive_flag[0])
        update = torch.empty(size)
        dist.broadcast(update, src=0, group=group)
        ps.apply(update)
    transport.close()
    dist.gather_object({"rank": rank, "role": f"worker {i}", **totals}, None, dst=0,
                       group=group)


def _launch_classes():
    """The trainer and aggregation of rank 0 (built lazily: they subclass innet run's)."""
    import torch.distributed as dist

    from emulator.server import request
    from innet import experiment

    class LaunchAggregation(experiment._Aggregation):
        addresses: dict[int, list] = {}  #: each live worker's UDP address
        alive: list[int] = []  #: the workers alive in this attempt
        control: tuple[str, int] = ("127.0.0.1", 0)

        @classmethod
        def lease_server(cls, s: Scenario, workers: list[int]) -> None:
            """The control plane leases the switch server's job for ``workers``."""
            n = s.network
            request(cls.control, {
                "op": "lease", "p": len(workers), "k": n.k, "pool": n.pool_size, "job": 0,
                "seed": s.seed, "workers": [cls.addresses[w] for w in workers],
                "up": {"loss": n.up_loss, "duplicate": n.duplicate, "reorder": n.reorder,
                       "delay": n.delay, "max_delay": n.max_delay},
                "down": {"loss": n.down_loss, "duplicate": n.duplicate,
                         "reorder": n.reorder, "delay": n.delay, "max_delay": n.max_delay}})

        def lease(self, live):  # the switch is the server process; the PS keeps its transport
            if self.path.via == "ps":
                super().lease(live)
            self.switch = None
            live = [w for w in live if w in self.alive]
            if getattr(self, "_leased", None) is None:  # rank 0 leased the alive workers
                self._leased, self._server_before = list(self.alive), None
            elif live != self._leased:  # again, without a worker that failed
                self.lease_server(self.scenario, live)
                self._leased, self._server_before = live, None

        def crash_step(self, G, worker, live):
            """The step a worker's process failed in, taken again by the live workers
            once torchrun restarted the ranks; it is charged the timeouts that found
            the failure."""
            n = self.scenario.network
            self.lease(live)
            update, modelled, stats = self.step(G[live])
            return update, modelled + n.max_retries * n.timeout_us * 1e-6, stats

        def _switch(self, G):
            tick = time.perf_counter()
            p, n = G.shape
            X = G.detach().to("cpu", torch.float32).contiguous()
            row = torch.empty(n)
            group = LaunchTrainer.group
            dist.scatter(row, [row] + list(X), src=0, group=group)  # the rows they send
            C = -(-n // self.k)
            flags = torch.zeros(C, dtype=torch.int32)
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=group)
            total = torch.empty(n, dtype=torch.float64)
            dist.broadcast(total, src=1 + self.alive[0], group=group)
            per: list = [None] * (p + 1)
            dist.gather_object(None, per, dst=0, group=group)
            total = total.numpy()
            fb = np.flatnonzero(flags.numpy())
            if len(fb):  # the PS sums the chunks no result came back for, in float
                cols = (fb[:, None] * self.k + np.arange(self.k)).reshape(-1)
                cols = cols[cols < n]
                total[cols] = X.numpy()[:, cols].sum(axis=0, dtype=np.float64)
            update = torch.from_numpy(total / p).to(G.device, torch.float32)
            self.ps.aggregate_seconds += time.perf_counter() - tick
            workers = per[1:]
            sent = [r["packets_sent"] for r in workers]
            retr = [r["retransmissions"] for r in workers]
            taken = [r["results_taken"] + r["stale_results"] for r in workers]
            try:
                server = request(self.control, {"op": "status"}, timeout=0.5,
                                 retries=2)["job"]
            except TimeoutError:  # the switch server is gone: its counters stay put
                server = None
            # every rank learns whether the switch still serves: it does if it answers
            # its control channel or summed any chunk of this step; if neither, later
            # steps go straight to the PS fallback instead of timing out again
            alive = server is not None or len(fb) < C
            dist.broadcast(torch.tensor([int(alive)], dtype=torch.int32), src=0, group=group)
            server = server if server is not None else (self._server_before or {})
            before = self._server_before or {}
            delta = {key: server.get(key, 0) - before.get(key, 0)
                     for key in ("emulated_lost_up", "emulated_lost_down", "results_sent")}
            self._server_before = server
            stats = {"packets_up": sum(sent), "packets_down": delta["results_sent"],
                     "retransmissions": sum(retr), "results_lost": delta["emulated_lost_down"],
                     "packets_lost_up": delta["emulated_lost_up"],
                     "duplicate_results": sum(r["stale_results"] for r in workers),
                     "fallback_chunks": {"overflow": 0, "silent_worker": len(fb),
                                         "no_slots": 0},
                     "switch_down_steps": int(len(fb) == C)}
            stats["bytes_on_wire"] = ((stats["packets_up"] + stats["packets_down"])
                                      * self.clock.packet_bytes(self.k))
            # the modelled time from the packet counts: one round of the first sends,
            # one for the retransmissions (the in-process engine logs every round)
            log = [(max(s_ - r_ for s_, r_ in zip(sent, retr)), max(taken), sum(sent) -
                    sum(retr), sum(taken), 0)]
            if sum(retr):
                log.append((max(retr), max(retr), sum(retr), sum(retr), 1))
            return update, self.clock.switch_step_s(log, self.k), stats

    class LaunchTrainer(experiment._Trainer):
        aggregation_class = LaunchAggregation
        plan: dict[str, Any] = {}
        group = None  #: the process group of rank 0 and the live workers' ranks

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.failed = self.plan.get("crashed")
            if self.failed is not None:  # a worker failed before the first checkpoint
                self.crash_worker, self.crash_step = self.failed, 1

        def restore(self, state):
            super().restore(state)
            if self.failed is not None:  # the worker failed in the step after the save
                self.crash_worker, self.crash_step = self.failed, self.done + 1
            # the workers continue from the same model, optimizer and sampling stream
            dist.broadcast_object_list([{
                "done": self.done, "model": state["model"], "optimizer": state["optimizer"],
                "scheduler": state["scheduler"], "sampler": state["sampler"],
                "pool_gen": state["generators"][0]}], src=0, group=self.group)

        def gradients(self):
            p, alive = self.scenario.workers.p, self.plan["alive"]
            n = sum(q.numel() for q in self.model.parameters())
            rows = [torch.empty(n + 1) for _ in range(len(alive) + 1)]
            dist.gather(torch.zeros(n + 1), rows, dst=0, group=self.group)
            # the workers' sampling stream, kept in step here for the checkpoints
            self.pool.minibatches()
            got = torch.stack(rows[1:])
            G, losses = torch.zeros(p, n), torch.full((p,), float("nan"))
            G[alive], losses[alive] = got[:, :n], got[:, n]
            return G, losses  # (a failed worker's row is never used: it is not live)

        def share_update(self, update):
            u = update.detach().to("cpu", torch.float32).contiguous()
            dist.broadcast(u, src=0, group=self.group)
            return update

    return LaunchAggregation, LaunchTrainer


if __name__ == "__main__":
    sys.exit(rank_main())
