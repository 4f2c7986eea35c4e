"""FA offload, aggregate level: how far the offloaded aggregate is from full FA.

    python benchmarks/fa_offload_study.py [--out runs/fa_offload_study] [--solver bfp|fixed]

For each (sketch size k′, eigensolver word length W, sketch bits b) the control plane
computes FA's coefficients from the b-bit sketches with the W-bit quantized Jacobi
solver (two-block floating point by default, ``--solver fixed`` for one exponent);
the aggregate Σ c_i g_i is compared with full FA (float64 Gram, LAPACK) on the same
gradients: relative error, cosine, and whether the same workers are
down-weighted (the f smallest |c_i| are the Byzantine ones in both). Matrices:
real digits-MLP gradients (p = 15, SGD steps 0, 50, 150) with f = 3 workers replaced
by uniform noise, and a planted-outlier synthetic set. Phase 2 (the streaming sum) is
left out here: its block-floating-point error is ≈ 1e-7 relative (BENCHMARKS.md).
Writes fa_offload_error.png (fa_offload_error_fixed.png with --solver fixed); the
last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from host.capture import digits_gradients  # noqa: E402
from host.fa_offload import OffloadedFA  # noqa: E402
from innet.aggregators.flag import FlagAggregator  # noqa: E402

K_PRIMES = (256, 1024, 4096, 16384)
WORDS = (12, 16, 20, 24, 32)
BITS = (8, 16, 31)  # 31: the widest the int64 Gram of the sketches holds exactly


def matrices(f=3):
    rng = np.random.default_rng(0)
    out = {}
    for step, G in zip((0, 50, 150), digits_gradients(steps=(0, 50, 150))):
        G = G.copy()
        G[:f] = rng.uniform(-10, 10, size=(f, G.shape[1]))
        out[f"digits_step{step}_uniform"] = G
    base = rng.normal(size=(1, 4810))
    P = base + 0.5 * rng.normal(size=(15, 4810))
    P[:f] = 10 * rng.normal(size=(f, 4810))
    out["planted"] = P
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/fa_offload_study",
                    help="folder for the figure (default runs/fa_offload_study; the copy in "
                    "docs/figures is refreshed by hand, never by default)")
    ap.add_argument("--solver", default="bfp", choices=("bfp", "fixed"))
    args = ap.parse_args()
    f = 3
    mats = matrices(f)
    full = {name: FlagAggregator(f=f).solve(torch.from_numpy(G)).aggregate.numpy()
            for name, G in mats.items()}
    rows = []
    for kp in K_PRIMES:
        for W in WORDS:
            for b in BITS:
                errs, coss, agree = [], [], []
                for name, G in mats.items():
                    c, *_ = OffloadedFA(15, f, k_prime=kp, W=W, b=b,
                                        solver=args.solver).coefficients(G)
                    agg = c @ G
                    ref = full[name]
                    errs.append(float(np.linalg.norm(agg - ref) / np.linalg.norm(ref)))
                    coss.append(float(agg @ ref / np.linalg.norm(agg) / np.linalg.norm(ref)))
                    agree.append(set(np.argsort(np.abs(c))[:f]) == set(range(f)))
                rows.append({"k_prime": kp, "W": W, "b": b, "max_rel_err": max(errs),
                             "min_cos": min(coss), "byzantine_down_weighted": all(agree)})
    print(f"{'k′':>6}{'W':>4}{'b':>4}{'max rel err':>13}{'min cos':>10}{'Byz found':>11}")
    for r in rows:
        print(f"{r['k_prime']:>6}{r['W']:>4}{r['b']:>4}{r['max_rel_err']:>13.2e}"
              f"{r['min_cos']:>10.5f}{str(r['byzantine_down_weighted']):>11}")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
        for ax, b in zip(axes, (8, 16)):
            for W in WORDS:
                ys = [r["max_rel_err"] for r in rows if r["W"] == W and r["b"] == b]
                ax.loglog(K_PRIMES, ys, marker="o", label=f"W = {W}")
            ax.set_title(f"sketch bits b = {b}")
            ax.set_xlabel("sketch size k′")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel("aggregate: rel. error vs full FA\n(worst of 4 gradient sets)")
        axes[1].legend(title="eigensolver word length")
        fig.suptitle(f"Offloaded FA, p = 15, f = 3 (uniform), {args.solver} eigensolver")
        fig.tight_layout()
        os.makedirs(args.out, exist_ok=True)
        suffix = "" if args.solver == "bfp" else f"_{args.solver}"
        path = os.path.join(args.out, f"fa_offload_error{suffix}.png")
        fig.savefig(path, dpi=120)
        print(f"figure: {path}")
    except ImportError:  # matplotlib is a declared dependency; keep the table anyway
        pass
    print(json.dumps({"solver": args.solver, "grid": rows}))


if __name__ == "__main__":
    main()
