"""The UDP switch server under load: packets per second of exact aggregation on
loopback, against a plain-Python ``recv_into`` loop measured in the same run.

    python benchmarks/udp_switch.py                 # p = 4, k = 64, 40 steps of 2^18
    python benchmarks/udp_switch.py --p 8 --steps 20 --n 65536

* **switch**: ``innet switch serve`` in its own process; a load generator in another
  process plays p workers (one socket each, so the server's ingress check sees p
  sources). Its packets are built before timing (quantised chunks of random rows,
  every use of every slot, in order); it keeps two windows of ``pool`` slots in
  flight per worker, as the protocol allows (a slot's set is reused only after its
  previous use completed), sending each window with one ``sendmmsg`` per worker and
  draining worker 0's results with ``recvmmsg`` (the other workers' sockets keep a
  small buffer the kernel drops from: the server sends them every result all the
  same). Every result is checked against the integer sum
  of the contributions (``exact``). The rate is the server's packets in over the time
  between its first and last batch.
* **recv loop**: a process that does ``sock.recv_into(buf)`` in a Python loop and
  nothing else, fed the same packets by the same generator (open loop, paced in
  windows); its rate is packets over the time between its first and last packet.

The last line is JSON: ``udp_switch_pps``, ``recv_loop_pps``, ``udp_vs_recv_loop``,
``exact``, ``kernel_drops`` (socket-buffer drops at the server, not emulated loss),
``results_checked``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402


def build_stream(p: int, k: int, pool: int, n: int, steps: int, seed: int = 0):
    """Every worker's packets of ``steps`` allreduces of n values, in protocol order,
    and the expected integer sum of every chunk."""
    from innet.protocol import encode
    from innet.quant import chunk_exponents, quantize_chunks, scale_of

    rng = np.random.default_rng(seed)
    C = -(-n // k)
    P = min(pool, C)
    per_worker = [[] for _ in range(p)]
    expected = []
    shadow = np.zeros(P, np.int64)
    for step in range(steps):
        X = rng.normal(size=(p, n)).astype(np.float32)
        e = chunk_exponents(X, k).max(axis=0)
        Q = quantize_chunks(X, 0, scale_of(e, p), k)  # (p, C, k): the agreed scales
        expected.append(Q.astype(np.int64).sum(axis=0))
        c = np.arange(C)
        sh = (shadow[c % P] + c // P) % 2
        shadow = (shadow + -(-(C - np.arange(P)) // P)) % 2
        for w in range(p):
            per_worker[w].append(encode({
                "job": np.zeros(C, int), "worker": np.full(C, w), "step": np.full(C, step),
                "packet_id": c, "shadow": sh, "slot": c % P, "flags": np.zeros(C, int),
                "exponent": np.zeros(C, int)}, Q[w]))
    return per_worker, np.concatenate(expected), C, P


def generator(p, k, pool, n, steps, data, control, out):
    os.environ["NUMBA_NUM_THREADS"] = "1"
    from emulator.server import request
    from innet.protocol import decode
    from innet.protocol.udp import BatchSocket, address_key

    streams, expected, C, P = build_stream(p, k, pool, n, steps)
    # worker 0's socket checks every result; the others' get the same multicast and
    # keep a small buffer that the kernel drops from (the server still sends to them)
    socks = [BatchSocket(k, batch=1024)] + [BatchSocket(k, batch=64, rcvbuf=4096)
                                            for _ in range(p - 1)]
    request(control, {"op": "lease", "p": p, "k": k, "pool": pool,
                      "workers": [[s.host, s.port] for s in socks]})
    server = address_key(*data)
    windows = [(step, lo) for step in range(steps) for lo in range(0, C, P)]
    got = []  # result packets reaching worker 0's socket (copies of the ring)
    have = [0]

    def drain(until_windows: int):
        need = sum(min(P, C - lo) for _, lo in windows[:until_windows])
        deadline = time.monotonic() + 10
        while have[0] < need and time.monotonic() < deadline:
            if not socks[0].wait(0.01):
                continue
            frames, _, _ = socks[0].recv()
            got.append(frames.copy())
            have[0] += len(frames)

    tick = time.perf_counter()
    for i, (step, lo) in enumerate(windows):
        if i >= 2:
            drain(i - 1)  # the window two back must be complete before its sets return
        hi = min(lo + P, C)
        for w in range(p):
            socks[w].send(streams[w][step][lo:hi], np.full(hi - lo, server))
    drain(len(windows))
    elapsed = time.perf_counter() - tick
    h, values = decode(np.concatenate(got).astype(socks[0].dtype)) if got else ({}, None)
    checked = 0 if values is None else len(values)
    exact = checked == steps * C
    if checked:
        where = h["step"].astype(np.int64) * C + h["packet_id"].astype(np.int64)
        exact &= len(np.unique(where)) == steps * C
        exact &= bool(np.array_equal(values, expected[where]))
    status = request(control, {"op": "status"})
    out.put({"exact": exact, "checked": checked, "elapsed": elapsed, "status": status})
    for s in socks:
        s.close()


def recv_loop(port_box, count_box, total):
    """The baseline: a plain Python recv_into loop."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2.0)
    port_box.put(sock.getsockname()[1])
    buf = bytearray(2048)
    n, first, last = 0, None, None
    try:
        while n < total:
            sock.recv_into(buf)
            last = time.perf_counter()
            if first is None:
                first = last
            n += 1
    except TimeoutError:
        pass
    count_box.put((n, (last - first) if n > 1 else float("nan")))


def baseline(p, k, pool, n, steps):
    from innet.protocol.udp import BatchSocket, address_key

    streams, _, C, P = build_stream(p, k, pool, n, steps)
    total = p * C * steps
    ctx = mp.get_context("spawn")
    port_box, count_box = ctx.Queue(), ctx.Queue()
    proc = ctx.Process(target=recv_loop, args=(port_box, count_box, total))
    proc.start()
    dest = address_key("127.0.0.1", port_box.get(timeout=30))
    sock = BatchSocket(k)
    time.sleep(0.2)
    for step in range(steps):
        for lo in range(0, C, P):
            hi = min(lo + P, C)
            for w in range(p):
                sock.send(streams[w][step][lo:hi], np.full(hi - lo, dest))
            time.sleep(0.0005 * (hi - lo) * p / 512)  # pace: about 1 Mpps offered
    got, seconds = count_box.get(timeout=60)
    proc.join(timeout=10)
    sock.close()
    return got, seconds, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--p", type=int, default=4)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--pool", type=int, default=512)
    ap.add_argument("--n", type=int, default=1 << 18)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    env = {**os.environ, "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    server = subprocess.Popen([sys.executable, "-m", "innet", "switch", "serve", "--port", "0",
                               "-k", str(args.k), "--idle-timeout", "120"],
                              stdout=subprocess.PIPE, text=True, env=env, cwd=root)
    try:
        info = json.loads(server.stdout.readline())
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        gen = ctx.Process(target=generator, args=(args.p, args.k, args.pool, args.n,
                                                  args.steps, tuple(info["data"]),
                                                  tuple(info["control"]), out))
        gen.start()
        res = out.get(timeout=600)
        gen.join(timeout=30)
        from emulator.server import request

        request(tuple(info["control"]), {"op": "shutdown"})
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    job = res["status"]["job"]
    span = job["last_batch_s"] - job["first_batch_s"]
    pps = job["packets_in"] / span if span > 0 else float("nan")
    got, seconds, total = baseline(args.p, args.k, args.pool, args.n, args.steps)
    loop_pps = got / seconds
    print(f"switch server: {job['packets_in']} packets in {span:.3f} s = {pps:,.0f} pps "
          f"exact={res['exact']} ({res['checked']} results checked), {job['results_sent']} "
          f"results sent, kernel drops {res['status']['kernel_drops']}, switch drops "
          f"{job['drops']}")
    print(f"recv_into loop: {got} of {total} packets in {seconds:.3f} s = {loop_pps:,.0f} pps")
    print(json.dumps({"p": args.p, "k": args.k, "pool": args.pool, "n": args.n,
                      "steps": args.steps, "udp_switch_pps": pps, "recv_loop_pps": loop_pps,
                      "udp_vs_recv_loop": pps / loop_pps, "exact": res["exact"],
                      "results_checked": res["checked"],
                      "kernel_drops": res["status"]["kernel_drops"],
                      "generator_s": res["elapsed"]}))


if __name__ == "__main__":
    main()
