"""The streaming protocol: the per-worker state machine against the in-process switch
and against the UDP switch server in real processes."""

import json
import multiprocessing as mp
import os
import queue
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from emulator.network import Link, LinkModel
from emulator.server import request
from emulator.switch import SumSwitch
from host.stream import StreamWorker, inprocess_allreduce
from host.switch_allreduce import SwitchAllreduce


@pytest.mark.parametrize("p,k,n,pool", [(3, 8, 500, 16), (5, 64, 5000, 8), (2, 4, 33, 100),
                                        (4, 16, 1000, 3), (1, 8, 17, 4)])
@pytest.mark.parametrize("loss", [0.0, 0.1])
def test_state_machines_give_the_compiled_engines_sums_bit_for_bit(p, k, n, pool, loss):
    """p worker state machines through the in-process switch, several steps, with and
    without loss, duplication and reordering: the same floats as the compiled engine
    (same quantiser, same exponents agreed one use ahead, same integers)."""
    rng = np.random.default_rng(p * 100 + n)
    ar = SwitchAllreduce(p, k, pool)
    sw = SumSwitch(p, k, pool)
    workers = [StreamWorker(i, p, k, pool) for i in range(p)]
    model = LinkModel(loss=loss, duplicate=loss, reorder=3 if loss else 0)
    up = [Link(model, 10 + i) for i in range(p)]
    down = [Link(model, 100 + i) for i in range(p)]
    for step in range(3):
        X = (rng.normal(size=(p, n)) * rng.uniform(0.01, 100)).astype(np.float32)
        expected, _ = ar.allreduce(X)
        sums, fallback = inprocess_allreduce(workers, sw, X, step, up, down)
        assert not fallback.any()
        for s in sums:
            assert np.array_equal(s, expected)
    if loss and n >= 500:  # enough packets that 10 % loss certainly hits some
        assert sum(w.stats.retransmissions for w in workers) > 0
        assert sw.drop_counts()["duplicate"] > 0 or p == 1  # p = 1: copies get unicasts


def test_a_worker_that_gives_up_marks_the_chunk_for_the_fallback():
    """A switch that never answers: after max_retries every use is given up and every
    chunk is marked for the fallback; nothing hangs."""
    w = StreamWorker(0, 2, k=4, pool=4, timeout=0.001, max_retries=2)
    x = np.arange(40, dtype=np.float32)
    w.start(x, 0, 0.0)
    now = 0.0
    for _ in range(1000):
        if w.done:
            break
        now = w.next_deadline()
        w.on_time(now)
    assert w.done
    _, fallback = w.result()
    assert fallback.all() and w.stats.retransmissions > 0


# -- real processes over UDP ------------------------------------------------------------
def _udp_worker(i, p, k, pool, data, X, inbox, outbox):
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    from host.stream import StreamWorker, UdpTransport, allreduce

    t = UdpTransport(tuple(data), k)
    outbox.put(("address", i, t.address))
    inbox.get(timeout=60)
    w = StreamWorker(i, p, k, pool, max_retries=200)  # a loaded CI machine may stall a
    sums = []  # process for seconds: no chunk may be given up for that
    for step in range(X.shape[0]):
        total, fallback, stats = allreduce(w, t, X[step, i], step, deadline_s=60)
        sums.append((total, int(fallback.sum()), stats.retransmissions))
    t.close()
    outbox.put(("done", i, sums))


@pytest.fixture
def switch_server():
    """A switch server process on free ports; killed and reaped afterwards."""
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "innet", "switch", "serve", "--port", "0",
                             "-k", "16", "--idle-timeout", "60"], stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        info = json.loads(proc.stdout.readline())
        yield proc, info
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)


@pytest.mark.parametrize("loss, delay", [(0.0, 0.0), (0.05, 0.0), (0.02, 0.2)])
def test_udp_workers_in_processes_sum_bit_for_bit_like_the_in_process_engine(
        switch_server, loss, delay):
    """p = 3 worker processes stream real UDP packets to a switch server process (5 %
    emulated loss on every link in one case; 2 % loss and 20 % of packets delayed by up
    to 4 of their link's batches, across rounds and steps, in another): every worker's
    sum equals the compiled in-process engine's bit for bit; losses are retransmitted
    and counted, late packets counted; the server answers status and shuts down; no
    process is left behind."""
    proc, info = switch_server
    p, k, pool, n, steps = 3, 16, 16, 3000, 4
    X = np.random.default_rng(7).normal(size=(steps, p, n)).astype(np.float32)
    ctx = mp.get_context("spawn")
    outbox = ctx.Queue()
    inboxes = [ctx.Queue() for _ in range(p)]
    procs = [ctx.Process(target=_udp_worker, args=(i, p, k, pool, info["data"], X,
                                                   inboxes[i], outbox), daemon=True)
             for i in range(p)]
    try:
        for pr in procs:
            pr.start()
        addresses = {}
        while len(addresses) < p:
            tag, i, addr = outbox.get(timeout=60)
            addresses[i] = addr
        control = tuple(info["control"])
        request(control, {"op": "lease", "p": p, "k": k, "pool": pool, "seed": 3,
                          "workers": [addresses[i] for i in range(p)],
                          "up": {"loss": loss, "delay": delay, "max_delay": 4},
                          "down": {"loss": loss, "delay": delay, "max_delay": 4}})
        for box in inboxes:
            box.put("go")
        done = {}
        deadline = time.monotonic() + 120
        while len(done) < p and time.monotonic() < deadline:
            try:
                tag, i, sums = outbox.get(timeout=1)
                done[i] = sums
            except queue.Empty:
                assert all(pr.is_alive() or pr.exitcode == 0 for pr in procs)
        assert len(done) == p
        ar = SwitchAllreduce(p, k, pool)
        for step in range(steps):
            expected, _ = ar.allreduce(X[step])
            for i in range(p):
                total, fallbacks, _ = done[i][step]
                assert fallbacks == 0 and np.array_equal(total, expected), (step, i)
        status = request(control, {"op": "status"})
        job = status["job"]
        if loss:
            assert job["emulated_lost_up"] > 0 and job["emulated_lost_down"] > 0
            assert sum(r for i in range(p) for _, _, r in done[i]) > 0
        assert job["drops"]["wrong_ingress_port"] == 0
        assert (job["late_packets"] > 0) == (delay > 0)
        request(control, {"op": "shutdown"})
        assert proc.wait(timeout=10) == 0
    finally:
        for pr in procs:
            pr.join(timeout=10)
            if pr.is_alive():
                pr.kill()
                pr.join()


def test_a_spoofed_worker_is_dropped_at_ingress(switch_server):
    """A packet claiming worker 0 from an address that is not worker 0's is dropped
    (wrong_ingress_port) and counted."""
    from innet.protocol import encode
    from innet.protocol.udp import BatchSocket

    proc, info = switch_server
    a, b = BatchSocket(16), BatchSocket(16)
    try:
        control = tuple(info["control"])
        request(control, {"op": "lease", "p": 2, "k": 16, "pool": 4,
                          "workers": [[a.host, a.port], [b.host, b.port]]})
        pk = encode({"job": [0], "worker": [0], "step": [0], "packet_id": [0], "shadow": [0],
                     "slot": [0], "flags": [0], "exponent": [0]}, np.ones((1, 16), np.int32))
        from innet.protocol.udp import address_key
        b.send(pk, [address_key(*info["data"])])  # b claims to be worker 0
        for _ in range(50):
            job = request(control, {"op": "status"})["job"]
            if job["drops"]["wrong_ingress_port"]:
                break
            time.sleep(0.05)
        assert job["drops"]["wrong_ingress_port"] == 1
        assert request(control, {"op": "status"})["job"]["results_sent"] == 0
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("gso", [True, False])
def test_header_only_packets_travel_as_header_only_datagrams(gso):
    """The exponent preamble (PHASE, count 0) leaves as 16-byte datagrams, mixed with
    full packets; the receiver gets every packet back, header-only ones with no values."""
    from innet.protocol import HEADER_BYTES, encode, flag
    from innet.protocol.udp import BatchSocket

    a, b = BatchSocket(4, gso=gso), BatchSocket(4, gso=gso)
    try:
        N = 300
        count = np.where(np.arange(N) % 3 == 0, 0, 4)
        pk = encode({"job": np.zeros(N, int), "worker": np.arange(N) % 7,
                     "step": np.zeros(N, int), "packet_id": np.arange(N),
                     "shadow": np.zeros(N, int), "slot": np.arange(N) % 100,
                     "flags": np.where(count == 0, flag("PHASE"), 0),
                     "exponent": np.zeros(N, int), "count": count},
                    np.arange(4 * N, dtype=np.int32).reshape(N, 4))
        assert a.send(pk, np.full(N, b.key)) == N
        got = []
        while sum(len(g) for g in got) < N and b.wait(1.0):
            got.append(b.recv()[0].copy())
        g = np.concatenate(got)
        g = g[np.argsort(g["packet_id"])]
        assert np.array_equal(g["packet_id"], pk["packet_id"])
        assert (g["count"] == count).all() and (g["values"][count == 0] == 0).all()
        assert np.array_equal(g["values"][count > 0], pk["values"][count > 0])
        assert HEADER_BYTES == 16 and b.malformed == 0
    finally:
        a.close()
        b.close()
