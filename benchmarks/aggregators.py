"""Time every aggregator on a (p, n) stack, and FA's Gram path against the literal
SVD-per-step reference (tests/references.py) in the same run.

    python benchmarks/aggregators.py                   # n = 2^20, p = 16, float32, CPU
    python benchmarks/aggregators.py --device cuda --n 11200000 --p 15

The last line printed is JSON with the timings and the speed-up ratios
``fa_gram_vs_svd_lam0`` and ``fa_gram_vs_svd_lam`` (iters = 5).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import references  # noqa: E402
from timing import timed  # noqa: E402

from innet import aggregators  # noqa: E402
from innet.devices import pick_device  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1 << 20)
    ap.add_argument("--p", type=int, default=16)
    ap.add_argument("--f", type=int, default=3)
    ap.add_argument("--lam", type=float, default=8.0, help="λ for the λ > 0 comparison")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--skip-svd", action="store_true", help="skip the slow SVD reference")
    args = ap.parse_args()
    device = pick_device(args.device)
    gen = torch.Generator().manual_seed(0)
    G = torch.randn(args.p, args.n, generator=gen).to(device)
    G[: args.f] = torch.rand(args.f, args.n, generator=gen).to(device)

    print(f"p={args.p} n={args.n} f={args.f} float32 on {device} "
          f"(torch {torch.__version__}, {torch.get_num_threads()} threads)")
    results: dict[str, float] = {}
    for name in aggregators.NAMES:
        rule = aggregators.get(name, f=args.f)
        results[f"{name}_ms"] = 1e3 * timed(lambda rule=rule: rule(G), args.repeats, device)
        print(f"  {name:<18} {results[f'{name}_ms']:10.1f} ms", flush=True)

    m = aggregators.flag.default_m(args.p)
    for tag, lam in (("lam0", 0.0), ("lam", args.lam)):
        fa = aggregators.get("fa", f=args.f, m=m, lam=lam, iters=5, tol=0.0)
        gram = timed(lambda fa=fa: fa(G), args.repeats, device)
        results[f"fa_gram_{tag}_ms"] = 1e3 * gram
        line = f"  fa gram  λ={lam:<5g} {1e3 * gram:10.1f} ms"
        if not args.skip_svd:
            svd = timed(lambda lam=lam: references.fa_svd(G, m, lam=lam, iters=5, tol=0.0), 1,
                        device)
            results[f"fa_svd_{tag}_ms"] = 1e3 * svd
            results[f"fa_gram_vs_svd_{tag}"] = svd / gram
            line += f"   svd {1e3 * svd:10.1f} ms   speed-up {svd / gram:8.1f}x"
        print(line, flush=True)
    print(json.dumps({"device": str(device), "p": args.p, "n": args.n, **results}))


if __name__ == "__main__":
    main()
