"""Fixed-point Jacobi eigensolver: time and accuracy against LAPACK.

    python benchmarks/quant.py

* time of one decomposition of a 16×16 symmetric matrix (Numba, W = 24), against
  numpy.linalg.eigh in the same run → ``jacobi_ms_p16``;
* on real gradient Grams (digits MLP, p = 15 workers, captured at SGD steps 0, 50
  and 150; raw and normalised by the gradient norms) and on a synthetic Gram with
  planted outliers: the largest principal angle between the top-m (m = 8)
  eigenvector subspaces, the relative eigenvalue error and the accurate bits, for
  W ∈ {12, 16, 20, 24, 28, 32}. The worst case over the real Grams is reported per W,
  the planted-outlier Gram (eigenvalues spread over 3 decades) apart.
The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from innet.quant.capture import digits_gradients  # noqa: E402
from innet.quant.fixed_eigen import accurate_bits, eigh_fixed, top_subspace_angle  # noqa: E402

WORDS = (12, 16, 20, 24, 28, 32)


def planted(p=15, n=4000, f=3, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(1, n))
    G = base + 0.5 * rng.normal(size=(p, n))
    G[:f] = 10 * rng.normal(size=(f, n))  # outliers
    return G


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=8)
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    A = rng.normal(size=(16, 16))
    A = A + A.T
    eigh_fixed(A, 24)  # compile
    reps = 200
    t = time.perf_counter()
    for _ in range(reps):
        eigh_fixed(A, 24)
    jacobi_ms = 1e3 * (time.perf_counter() - t) / reps
    t = time.perf_counter()
    for _ in range(reps):
        np.linalg.eigh(A)
    lapack_ms = 1e3 * (time.perf_counter() - t) / reps

    grams = {}
    for step, G in zip((0, 50, 150), digits_gradients(steps=(0, 50, 150))):
        K = G @ G.T
        d = np.sqrt(np.diag(K))
        grams[f"digits_step{step}"] = K
        grams[f"digits_step{step}_normalised"] = K / np.outer(d, d)
    Gp = planted()
    grams["planted_outliers"] = Gp @ Gp.T
    rows = {}
    for W in WORDS:
        angles, ev_err, bits = [], [], []
        for name, K in grams.items():
            angles.append(top_subspace_angle(K, args.m, W))
            if name == "planted_outliers":
                planted_angle = angles[-1]
            ev, _ = eigh_fixed(K, W)
            exact = np.linalg.eigvalsh(K)
            ev_err.append(float(np.abs(ev - exact).max() / np.abs(exact).max()))
            bits.append(accurate_bits(ev, exact))
        rows[W] = {"max_angle": max(angles[:-1]), "planted_angle": planted_angle,
                   "median_angle": float(np.median(angles[:-1])),
                   "eigenvalue_rel_err": max(ev_err), "accurate_bits": min(bits)}
    print(f"one 16×16 decomposition: fixed-point Jacobi (W=24) {jacobi_ms:.3f} ms, "
          f"LAPACK eigh {lapack_ms:.3f} ms")
    print(f"top-{args.m} subspace vs LAPACK: max / median angle over the {len(grams) - 1} real "
          "digits Grams, the planted-outlier Gram apart; eigenvalue error and bits worst case")
    print(f"{'W':>4}{'max angle':>12}{'median angle':>14}{'planted':>10}{'eig rel err':>13}"
          f"{'bits':>6}")
    for W, r in rows.items():
        print(f"{W:>4}{r['max_angle']:>12.2e}{r['median_angle']:>14.2e}{r['planted_angle']:>10.2e}"
              f"{r['eigenvalue_rel_err']:>13.2e}{r['accurate_bits']:>6.1f}")
    print(json.dumps({"jacobi_ms_p16": jacobi_ms, "lapack_ms_p16": lapack_ms,
                      "max_angle_by_W": {W: r["max_angle"] for W, r in rows.items()},
                      "planted_angle_by_W": {W: r["planted_angle"] for W, r in rows.items()},
                      "eigenvalue_rel_err_by_W": {W: r["eigenvalue_rel_err"]
                                                  for W, r in rows.items()},
                      "grams": list(grams)}))


if __name__ == "__main__":
    main()
