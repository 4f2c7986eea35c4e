"""Integrity of the FA offload's phase 2: how often each lie is caught, and what a lie
that passes can do.

    python benchmarks/offload_integrity.py            # 200 steps per attack
    python benchmarks/offload_integrity.py --steps 400 --seed 3

Gradients: real digits-MLP gradients of p = 15 workers at SGD steps 0 … 150 (one
matrix per step, cycled), f = 3 of them replaced by uniform noise in phase 1 (FA
gives them ≈ 0 weight). The liars are workers 3, 4 and 5, honest in phase 1; in
phase 2 they send something else. Every step draws fresh secrets (the public
checksum's bucket signs, the secret sketch's buckets and signs), and every check
runs on the integers the switch sums (``emulator.offload.GuardSwitch``). Attacks:

* ``honest``: nobody lies (false alarms);
* ``scaled``: −10·c_i·g_i; ``scaled_1.5``: 1.5·c_i·g_i;
* ``null_space``: δ with Sδ = 0 for the public sketch (host.fa_offload);
* ``sparse_1`` / ``sparse_4`` / ``sparse_16``: one coordinate in each of d buckets
  pushed to the per-value bound ∓|c_i|·‖g_i‖;
* ``int_flip``: the integers of every packet negated after quantisation;
  ``int_lanes``: 8 random lanes set to ±2^30 after quantisation;
* ``nan``: NaN in 16 coordinates of the phase-2 vector (the worker's quantiser
  turns them into integers the bound then clamps);
* ``residual``: the worst lie the checks cannot see, by construction: each liar
  flips the component of its vector that lies in the public sketch's null space and
  is orthogonal to every other worker's vector (δ = −2·P·v_i: the norm, the public
  sketch and every inner product with the others are unchanged). It needs the
  other workers' vectors (an omniscient attacker). Its damage ‖δ‖ / ‖aggregate‖ is
  the residual the design leaves.

For each attack: steps, the share of steps on which a liar was caught, and the
damage ‖aggregate − full FA‖ / ‖full FA‖ over the steps that were not caught (a
caught step falls back to full FA: no damage). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from host.capture import digits_gradients  # noqa: E402
from host.fa_offload import OffloadedFA, null_space_phase2, scaled_phase2  # noqa: E402
from innet.aggregators.flag import FlagAggregator  # noqa: E402

LIARS = [3, 4, 5]


def null_and_private(sketch, V: np.ndarray, i: int) -> np.ndarray:
    """P·v_i: v_i projected onto the public sketch's null space, then off every other
    worker's (projected) vector — the part of v_i no check can see."""
    bucket, sign = sketch.bucket, sketch.sign

    def P_S(x):  # project onto {x : S x = 0}: remove each bucket's signed mean
        sums = np.bincount(bucket, weights=sign * x, minlength=sketch.k_prime)
        counts = np.bincount(bucket, minlength=sketch.k_prime)
        return x - sign * (sums / np.maximum(counts, 1))[bucket]

    others = np.stack([P_S(V[j]) for j in range(len(V)) if j != i])
    Q, _ = np.linalg.qr(others.T)
    x = P_S(V[i])
    return x - Q @ (Q.T @ x)


def attacks(rng: np.random.Generator, n_lanes: int = 8):
    def sparse(d):
        def attack(V, c, sketch):
            for i in LIARS:
                bound = np.linalg.norm(V[i])  # |c_i|·‖g_i‖: the honest vector's norm
                for b in rng.choice(np.unique(sketch.bucket), size=d, replace=False):
                    where = np.flatnonzero(sketch.bucket == b)
                    j = where[rng.integers(where.size)]
                    V[i, j] = -np.sign(V[i, j] or 1.0) * bound
            return V
        return attack

    def nan(V, c, sketch):
        for i in LIARS:
            V[i, rng.choice(V.shape[1], size=16, replace=False)] = np.nan
        return V

    def residual(V, c, sketch):
        honest = V.copy()
        for i in LIARS:
            V[i] = honest[i] - 2 * null_and_private(sketch, honest, i)
        return V

    def int_flip(Q, window):
        Q[LIARS] = -Q[LIARS]
        return Q

    def int_lanes(Q, window):
        for i in LIARS:
            flat = Q[i].reshape(-1)
            where = rng.choice(flat.size, size=min(n_lanes, flat.size), replace=False)
            flat[where] = rng.choice([-1, 1], size=where.size) * 2**30
        return Q

    return {
        "honest": (None, None),
        "scaled": (scaled_phase2(LIARS), None),
        "scaled_1.5": (scaled_phase2(LIARS, factor=1.5), None),
        "null_space": (null_space_phase2(LIARS), None),
        "sparse_1": (sparse(1), None),
        "sparse_4": (sparse(4), None),
        "sparse_16": (sparse(16), None),
        "int_flip": (None, int_flip),
        "int_lanes": (None, int_lanes),
        "nan": (nan, None),
        "residual": (residual, None),
    }


def run(steps: int, seed: int) -> dict:
    mats = []
    for G in digits_gradients(steps=(0, 25, 50, 100, 150)):
        G = G.copy()
        G[:3] = np.random.default_rng(seed).uniform(-10, 10, size=(3, G.shape[1]))
        mats.append(G)
    full = [FlagAggregator(f=3).solve(torch.from_numpy(G)).aggregate.numpy() for G in mats]
    rng = np.random.default_rng(seed)
    out = {}
    for name, (phase2, tamper) in attacks(rng).items():
        off = OffloadedFA(15, 3, seed=seed, quarantine=0)  # every step checked afresh
        off.phase2_attack = phase2
        off.switch.tamper = tamper
        caught = false_alarms = 0
        damage, finite = [], True
        for t in range(steps):
            G = mats[t % len(mats)]
            agg, stats = off.aggregate(G)
            finite &= bool(np.isfinite(agg).all())
            lying = phase2 is not None or tamper is not None
            liars_caught = set(stats.checks_failed) & set(LIARS) if lying else set()
            false_alarms += bool(set(stats.checks_failed) - liars_caught)
            if liars_caught:
                caught += 1
            else:
                ref = full[t % len(mats)]
                damage.append(float(np.linalg.norm(agg - ref) / np.linalg.norm(ref)))
        out[name] = {"steps": steps, "caught": caught / steps,
                     "false_alarm_steps": false_alarms,
                     "uncaught_damage_max": max(damage) if damage else 0.0,
                     "uncaught_damage_mean": float(np.mean(damage)) if damage else 0.0,
                     "finite": finite}
        r = out[name]
        print(f"{name:11s} caught {r['caught']:7.2%}  false alarms {false_alarms:3d}  "
              f"damage when not caught: max {r['uncaught_damage_max']:.4f} mean "
              f"{r['uncaught_damage_mean']:.4f}  finite {finite}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    start = time.perf_counter()
    out = run(args.steps, args.seed)
    lies = [k for k in out if k not in ("honest", "residual")]
    print(json.dumps({"attacks": out,
                      "min_caught": min(out[k]["caught"] for k in lies),
                      "honest_false_alarm_steps": out["honest"]["false_alarm_steps"],
                      "residual_damage_max": out["residual"]["uncaught_damage_max"],
                      "seconds": time.perf_counter() - start}))


if __name__ == "__main__":
    main()
