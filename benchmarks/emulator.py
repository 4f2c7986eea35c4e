"""Emulator throughput against numpy, measured in the same run.

    python benchmarks/emulator.py            # p = 16 workers × 2^22 int32, 64-value packets

* switch-only: the Numba pipeline aggregating all packets (already parsed into native
  arrays: the parser's byte swap is the `decode` row), against accumulating the same
  p rows with np.add → ``switch_vs_numpy_add``;
* the same with 1 % loss on every up and down link, retransmissions and kept-result
  unicasts included (links and reassembly in numpy) → ``switch_vs_numpy_add_loss1``;
* end-to-end: quantise → packets → links → switch → reassemble → dequantise, against a
  float32 numpy sum of the rows → ``end_to_end_vs_float_sum``.
Prints packets/s beside bmv2's ≈ 80 kpps (REFERENCE §4.5); the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# this file is named like the package it measures: look up packages from the repo root
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from emulator.network import LinkModel  # noqa: E402
from emulator.switch import SumSwitch  # noqa: E402
from host.switch_allreduce import SwitchAllreduce  # noqa: E402
from innet.protocol import decode, encode  # noqa: E402
from innet.quant import INT32_MAX  # noqa: E402

BMV2_PPS = 80_000


def best(*fns, repeats: int) -> list[float]:
    """Best-of-``repeats`` seconds of each function, the functions interleaved so that
    a baseline and what is compared with it see the same machine (shared cores are
    noisy: a ratio of two bests taken minutes apart is not)."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, acc in zip(fns, times):
            t = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t)
    return [min(acc) for acc in times]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--p", type=int, default=16)
    ap.add_argument("--log2n", type=int, default=22)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--pool", type=int, default=8192, help="slots per shadow set")
    ap.add_argument("--repeats", type=int, default=15,
                    help="interleaved rounds; each figure is the best of them")
    args = ap.parse_args()
    p, n, k, P = args.p, 1 << args.log2n, args.k, args.pool
    rng = np.random.default_rng(0)
    Q = rng.integers(-(INT32_MAX // p), INT32_MAX // p, size=(p, n), dtype=np.int32)
    C = n // k
    windows = C // P
    packets = p * C

    def numpy_add():
        acc = Q[0].copy()
        for i in range(1, p):
            np.add(acc, Q[i], out=acc)
        return acc

    # switch-only: packets of window b arrive interleaved (chunk-major), parsed in advance
    Qw = Q.reshape(p, windows, P, k).transpose(1, 2, 0, 3).reshape(windows, P * p, k)
    Qw = np.ascontiguousarray(Qw)
    slot = np.repeat(np.arange(P, dtype=np.int32), p)
    worker = np.tile(np.arange(p, dtype=np.int32), P)
    zeros = np.zeros(P * p, np.int32)

    def headers(b):
        return {"job": zeros, "worker": worker, "shadow": zeros + b % 2, "slot": slot,
                "flags": zeros, "exponent": zeros, "count": zeros + k,
                "step": np.zeros(P * p, np.uint32), "packet_id": slot + b * P}  # u32 on the wire

    hdrs = [headers(b) for b in range(windows)]
    sw = SumSwitch(p, k, P)
    SumSwitch(p, k, P).process_native(hdrs[0], Qw[0], worker)  # compile / warm
    vector = [0]  # each call sums one more vector: its packets carry the next step

    def switch_only():
        out = None
        vector[0] += 1
        for b in range(windows):
            hdrs[b]["step"].fill(vector[0])
            out = sw.process_native(hdrs[b], Qw[b], worker)
        return out

    t_np, t_sw = best(numpy_add, switch_only, repeats=args.repeats)
    res = switch_only()
    ok = np.array_equal(res.values[-1].astype(np.int64),
                        Q.reshape(p, C, k)[:, -1].astype(np.int64).sum(0))
    wire = encode({**hdrs[0], "step": zeros, "packet_id": zeros}, Qw[0])
    t_decode = best(lambda: decode(wire), repeats=3)[0] * windows

    # 1 % loss, up and down, with retransmission
    lossy = LinkModel(loss=0.01)
    Qr = [np.ascontiguousarray(Q.reshape(p, windows, P, k)[:, b]) for b in range(windows)]
    e = np.zeros((p, P), np.int32)
    ar = SwitchAllreduce(p, k, P, up=lossy, down=lossy, seed=1)
    SwitchAllreduce(p, k, 4).reduce_window(Qr[0][:, :4].copy(), e[:, :4], 0)  # warm

    def lossy_run():
        for b in range(windows):
            ar.reduce_window(Qr[b], e, b)

    t_np2, t_loss = best(numpy_add, lossy_run, repeats=args.repeats)
    # end to end on floats
    X = rng.normal(size=(p, n)).astype(np.float32)
    fsum = np.empty(n, np.float32)
    e2e = SwitchAllreduce(p, k, P)
    buf = np.empty(n, np.float64)  # both sides write into a preallocated output
    t_fsum, t_e2e = best(lambda: X.sum(axis=0, out=fsum), lambda: e2e.allreduce(X, out=buf),
                         repeats=args.repeats)
    out, stats = e2e.allreduce(X)
    err = float(np.abs(out - X.sum(0, dtype=np.float64)).max())

    pps = packets / t_sw
    figures = {
        "p": p, "n": n, "k": k, "pool": P, "packets": packets,
        "numpy_add_ms": 1e3 * t_np, "switch_ms": 1e3 * t_sw, "decode_ms": 1e3 * t_decode,
        "switch_loss1_ms": 1e3 * t_loss, "float_sum_ms": 1e3 * t_fsum,
        "end_to_end_ms": 1e3 * t_e2e, "end_to_end_max_abs_err": err,
        "switch_pps": pps, "switch_elements_per_s": pps * k, "vs_bmv2_pps": pps / BMV2_PPS,
        "switch_vs_numpy_add": t_np / t_sw,
        "switch_vs_numpy_add_loss1": t_np2 / t_loss,
        "end_to_end_vs_float_sum": t_fsum / t_e2e,
        "exact": bool(ok),
    }
    print(f"p={p} × n={n} int32, k={k}: {packets} packets, {windows} windows of {P} slots")
    print(f"  np.add of the rows        {1e3 * t_np:8.1f} ms")
    print(f"  switch pipeline           {1e3 * t_sw:8.1f} ms   {pps / 1e6:.2f} Mpps "
          f"({pps * k / 1e9:.2f} G elem/s; {pps / BMV2_PPS:.0f}× bmv2's 80 kpps)  "
          f"ratio {t_np / t_sw:.2f}")
    print(f"  parser byte swap (decode) {1e3 * t_decode:8.1f} ms")
    print(f"  switch + 1% loss links    {1e3 * t_loss:8.1f} ms   ratio {t_np2 / t_loss:.2f}"
          f"   (np.add {1e3 * t_np2:.1f} ms in this pairing)")
    print(f"  float32 numpy sum         {1e3 * t_fsum:8.1f} ms")
    print(f"  end to end                {1e3 * t_e2e:8.1f} ms   ratio {t_fsum / t_e2e:.2f}"
          f"   max |err| {err:.2e}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
