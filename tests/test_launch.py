"""innet launch: real processes (a UDP switch server, torchrun ranks) against innet run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ENV = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
# max_retries: a loaded CI machine may stall a rank for seconds; no chunk may be given
# up for that (the train_loss comparison would still hold, the no-fallback check not)
FLAGS = ["--set", "workers.p=3", "--set", "training.steps=20", "--set",
         "network.max_retries=200", "--no-report", "--no-progress"]


def _children(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (from /proc)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, parent in parents.items() if parent == p]
        out += kids
        todo += kids
    return out


def _leftovers() -> list[int]:
    """Descendants of this test process that a launch started (switch server, torchrun,
    ranks); other tests' helpers (a multiprocessing resource tracker) do not count."""
    out = []
    for pid in _children(os.getpid()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        # the arguments, not argv[0]: the interpreter's own path names "innet" when
        # the checkout does (a clone in .../innet/.venv), and so does every helper's
        args = cmd.split(b"\0")[1:]
        if any(a == b"innet" or a.endswith(b"/innet")  # -m innet, the console script
               or a.startswith((b"innet.", b"torch.distributed")) for a in args):
            out.append(pid)
    return out


def _innet(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "innet", *args], env=ENV, timeout=timeout,
                          capture_output=True, text=True)


def _losses(folder: Path) -> dict:
    out = {}
    for line in (folder / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out[(r["path"], r["step"])] = r
    return out


@pytest.mark.parametrize("loss, delay", [(0.0, 0.0), (0.05, 0.0), (0.02, 0.2)])
def test_launch_trains_like_run(tmp_path, loss, delay):
    """The same scenario through `innet launch` (3 worker ranks + PS + switch server,
    real UDP) and `innet run`: the switch path's and the PS path's train_loss agree at
    every step; retransmissions are counted under loss (and late packets under delay,
    up to 4 batches, on the server's links); nothing is left running."""
    flags = FLAGS + ["--set", f"network.up_loss={loss}", "--set", f"network.down_loss={loss}",
                     "--set", f"network.delay={delay}", "--set", "network.max_delay=4"]
    launched = _innet("launch", "scenarios/switch_loss.toml", "--out", str(tmp_path / "l"),
                      *flags)
    assert launched.returncode == 0, launched.stderr[-3000:]
    ran = _innet("run", "scenarios/switch_loss.toml", "--out", str(tmp_path / "r"), *flags)
    assert ran.returncode == 0, ran.stderr[-3000:]
    a, b = _losses(tmp_path / "l"), _losses(tmp_path / "r")
    assert set(a) == set(b) and len(b) == 40
    for key, rec in b.items():
        assert abs(a[key]["train_loss"] - rec["train_loss"]) <= 1e-4 * abs(rec["train_loss"])
    switch = [r for (path, _), r in a.items() if path == "switch:mean"]
    assert all(r["fallback_chunks"] == 0 for r in switch)
    if loss:
        assert sum(r["retransmissions"] for r in switch) > 0
    summary = json.loads((tmp_path / "l" / "summary.json").read_text())
    assert set(summary) == {"mean", "switch:mean"}
    procs = _processes(tmp_path / "l")
    assert len(procs["ranks"]) == 4 and procs["ranks"][0]["role"] == "ps"
    assert (procs["ranks"][0]["switch_server"]["job"]["late_packets"] > 0) == (delay > 0)
    assert procs["failures"] == [] and procs["attempts"] == 1, procs["failures"]  # mid-run
    assert not _leftovers()


def test_launch_writes_a_pcap_of_the_real_packets(tmp_path):
    """--pcap: the switch server's datagrams in both directions, with real timestamps
    (inside the launch's wall-clock span), each worker's own host, results from the
    switch, the header-only preamble, FIRST on chunk 0 and LAST on the last chunk."""
    from scapy.layers.inet import IP
    from scapy.utils import rdpcap

    from innet.protocol import decode, flag, packet_dtype
    from innet.protocol.header import InnetAgg
    from innet.protocol.pcap import SWITCH_IP, host_of

    before = time.time()
    pcap = tmp_path / "launch.pcap"
    launched = _innet("launch", "scenarios/switch_loss.toml", "--out", str(tmp_path / "l"),
                      "--set", "workers.p=3", "--set", "training.steps=2", "--no-report",
                      "--no-progress", "--pcap", str(pcap), "--pcap-packets", "2000")
    after = time.time()
    assert launched.returncode == 0, launched.stderr[-3000:]
    frames = rdpcap(str(pcap))
    assert len(frames) == 2000  # (two steps send more)
    workers = {host_of(w)[0] for w in range(3)}
    up = [f for f in frames if f[IP].dst == SWITCH_IP]
    down = [f for f in frames if f[IP].src == SWITCH_IP]
    assert up and down and len(up) + len(down) == len(frames)
    assert {f[IP].src for f in up} == workers and {f[IP].dst for f in down} == workers
    times = np.array([float(f.time) for f in frames])
    assert before <= times.min() and times.max() <= after
    k = 64
    raw = [bytes(f[InnetAgg]) for f in frames]
    size = packet_dtype(k).itemsize
    packets = np.frombuffer(b"".join(r + bytes(size - len(r)) for r in raw),
                            packet_dtype(k))
    h, _ = decode(packets)
    result = (h["flags"] & flag("RESULT")) != 0
    assert result.tolist() == [f[IP].src == SWITCH_IP for f in frames]  # directions
    assert ((h["flags"] & flag("PHASE")) != 0).any()  # the preamble, header-only
    assert min(len(r) for r in raw) == 16
    assert ((h["flags"] & flag("FIRST")) != 0)[h["packet_id"] == 0].any()
    data = (h["flags"] & flag("PHASE")) == 0
    last = (h["flags"] & flag("LAST")) != 0
    assert last.any() and (h["packet_id"][last] == h["packet_id"][data].max()).all()
    assert not (last & ~data).any()
    assert not _leftovers()


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _launch_then(tmp_path, name: str, network: str, fault) -> list[dict]:
    """Launch a 30-step switch-path run of p = 3, call ``fault(launch process)`` once
    step 10 is written, let the run finish (it must), return its metrics records."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    scenario = tmp_path / "s.toml"
    scenario.write_text(f'name = "{name}"\n[workers]\np = 3\nf = 0\n[training]\nsteps = 30\n'
                        f'{network}[[paths]]\nrule = "mean"\nvia = "switch"\n')
    out = tmp_path / name
    proc = subprocess.Popen([sys.executable, "-m", "innet", "launch", str(scenario), "--out",
                             str(out), "--no-report", "--no-progress"], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            parts = list((out / "units").glob("*.jsonl")) if (out / "units").exists() else []
            if parts and len(parts[0].read_text().splitlines()) >= 10:
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        fault(proc)
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_launch_finishes_on_the_ps_fallback_when_the_switch_server_dies(tmp_path):
    """kill -9 of the switch server mid-run: the workers time out, every later step is
    aggregated by the PS fallback (counted), the run finishes and nothing is left."""

    def kill_switch(proc):
        servers = [pid for pid in _children(proc.pid) if b"switch\x00serve" in _cmdline(pid)]
        assert servers
        os.kill(servers[0], signal.SIGKILL)

    records = _launch_then(tmp_path, "kill_switch", "", kill_switch)
    assert len(records) == 30 and records[-1]["step"] == 30
    assert records[-1]["fallback_chunks"] > 0  # the last steps went to the PS
    assert records[0]["fallback_chunks"] == 0
    assert records[-1]["train_loss"] < records[0]["train_loss"]  # it kept training
    assert not _leftovers()


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\x00")
    except OSError:
        return None
    ranks = [int(e[5:]) for e in env if e.startswith(b"RANK=")]
    return ranks[0] if ranks else None


def _rank_pids(launch_pid: int) -> dict[int, int]:
    """rank → pid of the torchrun ranks a launch started."""
    out = {}
    for pid in _children(launch_pid):
        cmd = _cmdline(pid)
        if b"innet.launch" in cmd and b"torch.distributed.run" not in cmd:
            rank = _rank_of(pid)
            if rank is not None:
                out[rank] = pid
    return out


def _kill_rank(rank: int):
    """The fault ``kill -9`` of one rank of the launch."""

    def fault(proc):
        pids = _rank_pids(proc.pid)
        assert rank in pids, pids
        os.kill(pids[rank], signal.SIGKILL)

    return fault


def _processes(folder: Path) -> dict:
    return json.loads(next((folder / "units").glob("*.processes.json")).read_text())


def test_launch_finishes_without_a_worker_killed_mid_run(tmp_path):
    """kill -9 of worker rank 2 (worker 1) once step 10 of 30 is written: torchrun
    restarts the ranks, the unit resumes from its last checkpoint without worker 1
    (the switch job re-leased for p − 1 = 2), the crash step is recorded, the switch
    serves every later step, the run finishes and nothing is left running."""
    records = _launch_then(tmp_path, "kill_worker", "", _kill_rank(2))
    assert [r["step"] for r in records] == list(range(1, 31))  # each step once
    crashed = [r for r in records if "crashed_worker" in r]
    assert len(crashed) == 1 and crashed[0]["crashed_worker"] == 1
    assert crashed[0]["step"] >= 10
    after = [r for r in records if r["step"] > crashed[0]["step"]]
    assert after and all(r["fallback_chunks"] == 0 for r in after)  # 2 workers, exact
    assert records[-1]["train_loss"] < records[0]["train_loss"]
    summary = json.loads((tmp_path / "kill_worker" / "summary.json").read_text())
    network = summary["switch:mean"]["network"]
    assert network["crashed_workers"] == 1 and "fallback_chunks" in network
    procs = _processes(tmp_path / "kill_worker")
    assert procs["failures"][0]["rank"] == 2 and procs["failures"][0]["exitcode"] == -9
    assert procs["dead_workers"] == [1] and len(procs["ranks"]) == 3  # PS + 2 workers
    assert not _leftovers()


def test_launch_resumes_when_the_ps_is_killed_mid_run(tmp_path):
    """kill -9 of rank 0 (the PS) after step 10: torchrun restarts the ranks, rank 0
    resumes the unit from its checkpoint with every worker, each step is written once
    and no worker is recorded as crashed."""
    records = _launch_then(tmp_path, "kill_ps", "", _kill_rank(0))
    assert [r["step"] for r in records] == list(range(1, 31))
    assert not any("crashed_worker" in r for r in records)
    assert all(r["fallback_chunks"] == 0 for r in records[-10:])
    procs = _processes(tmp_path / "kill_ps")
    assert [f["rank"] for f in procs["failures"]] == [0] and procs["dead_workers"] == []
    assert len(procs["ranks"]) == 4
    assert not _leftovers()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_sigterm_to_launch_stops_everything_and_resume_finishes(tmp_path):
    """SIGTERM to `innet launch` mid-run: it stops the switch server, torchrun and
    every rank (they live in sessions of their own, out of the signal's reach), exits
    143 and says so; `innet launch --resume` continues the unit from its checkpoint and
    writes each step once."""
    scenario = tmp_path / "s.toml"
    scenario.write_text('name = "term"\n[workers]\np = 3\nf = 0\n[training]\nsteps = 30\n'
                        '[[paths]]\nrule = "mean"\nvia = "switch"\n')
    out = tmp_path / "term"
    cmd = [sys.executable, "-m", "innet", "launch", str(scenario), "--out", str(out),
           "--no-report", "--no-progress"]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            parts = list((out / "units").glob("*.jsonl")) if (out / "units").exists() else []
            if parts and len(parts[0].read_text().splitlines()) >= 8:
                break
            time.sleep(0.2)
        started = _children(proc.pid)
        assert len(started) >= 5  # the server, torchrun and its 4 ranks
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143 and "stopped by a signal" in stderr, stderr[-2000:]
    assert not [pid for pid in started if _alive(pid)]
    part = next((out / "units").glob("*.jsonl"))
    before = part.read_text().splitlines()[:5]  # (their elapsed_s differ if run again)
    resumed = subprocess.run(cmd + ["--resume"], env=ENV, capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 31))
    assert part.read_text().splitlines()[:5] == before  # continued, not started again
    assert not _leftovers()


def test_a_worker_that_stalls_and_resumes_rejoins(tmp_path):
    """SIGSTOP of one worker rank for 3 s mid-run, then SIGCONT. Where the stall hits
    the streaming, the others give the step's chunks up to the PS fallback (counted)
    and the stalled worker's late packets and results are dropped as stale; where it
    hits a collective, everyone waits. Either way it rejoins: the run finishes and its
    last steps run through the switch again."""

    def stall_a_worker(proc):
        worker = _rank_pids(proc.pid)[3]  # a worker rank
        os.kill(worker, signal.SIGSTOP)
        time.sleep(3)
        os.kill(worker, signal.SIGCONT)

    records = _launch_then(tmp_path, "stall", "[network]\nmax_retries = 6\n", stall_a_worker)
    assert len(records) == 30
    assert all(r["fallback_chunks"] == 0 for r in records[-3:])  # it rejoined
    slowest = max(b["elapsed_s"] - a["elapsed_s"] for a, b in zip(records, records[1:]))
    assert slowest >= 2.5  # the stall happened inside the run
    assert not _leftovers()
