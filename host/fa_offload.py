"""Two-phase in-network Flag Aggregator.

FA needs only the p×p Gram matrix of the gradients and returns a weighted sum G·c
(REFERENCE §1.4), so the work splits in two:

* **phase 1 (sketch)**: each worker sends its gradient norm and a k′-value CountSketch
  of its normalised gradient — coordinate j goes to bucket h(j) with sign σ(j), both
  from a seed all workers share, so the sketch needs additions only — quantised to b
  bits with one exponent per worker. The switch stores the p sketches in registers
  (``p4_models.sketch_store``); the control plane forms the sketched Gram matrix from
  the integer sketches and runs FA's IRLS with a quantized Jacobi eigensolver
  (``innet.quant.fixed_eigen``, word length W; two-block floating point by default)
  → coefficients c.
* **phase 2 (sum)**: worker i streams c_i·g_i through the streaming-sum program
  (block floating point, retransmission, fallback: ``host.switch_allreduce``); the
  sum is the aggregate.

Phase 2 is where a Byzantine worker can lie: it can send an honest sketch and then a
different vector. Two switch-feasible defences, both set by the control plane:

* **checksum**: per step the control plane draws secret signs ρ_r for the sketch
  buckets r ∈ R — every bucket by default, or a secret random subset of
  ``check_buckets`` of them. The switch adds, per worker, ρ_h(j)·σ(j)·v_j over the
  coordinates j of its phase-2 stream whose bucket is in R (additions and
  subtractions only; h and σ are the public hashes). For an honest worker the total
  equals c_i·‖g_i‖·Σ_{r∈R} ρ_r·ŷ_ir, which the control plane knows from phase 1, up
  to quantisation. A mismatch beyond the tolerance sends the step to the PS, which
  runs full FA on the float gradients (the fallback is counted).
* **bound**: the switch clamps every phase-2 value of worker i to ±|c_i|·‖g_i‖ (a
  saturating min/max per lane), so no single coordinate can exceed what an honest
  c_i·g_i could hold, and counts the clamps.

A worker that fails the checksum is **quarantined** for ``quarantine`` steps (default
10; 0 turns it off): the control plane leaves it out of phase 1's Gram and gives it
c_i = 0, so it sends nothing in phase 2 and cannot force a fallback every step. It is
re-admitted afterwards (and quarantined again if it lies again); quarantined workers
are counted per step.

What they catch: any phase-2 vector whose sketch differs from c_i·ŷ_i·‖g_i‖ on the
secret buckets — scaling, sign flips, a different gradient, noise. What they cannot
catch: a deviation δ in the null space of the public sketch (Sδ = 0, e.g. +a on one
coordinate and ∓a on another coordinate of the same bucket): its checksum is zero for
every R. The bound limits such a δ per coordinate, not in norm; its damage is
measured, not prevented (``null_space`` attack, docs/FA_OFFLOAD.md).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from emulator.offload import GuardSwitch, SketchSwitch
from host.switch_allreduce import AllreduceStats, SwitchAllreduce
from innet.aggregators.base import VALUE_BYTES, Cost
from innet.aggregators.flag import FlagAggregator, default_m
from innet.quant.block_float import EXP_MAX, EXP_MIN, scale_of
from innet.quant.control_plane import OUTPUT_CODES, fa_irls
from innet.quant.fixed_eigen import SOLVERS, torch_eigh


class CountSketch:
    """S (k′ × n) with one ±1 per column: y = S·x adds σ(j)·x_j into bucket h(j)."""

    def __init__(self, n: int, k_prime: int, seed: int):
        rng = np.random.default_rng(seed)
        self.n, self.k_prime = n, k_prime
        self.bucket = rng.integers(0, k_prime, size=n)
        self.sign = rng.choice(np.array([-1.0, 1.0]), size=n)

    def __call__(self, X: np.ndarray) -> np.ndarray:
        """Sketch the rows of X (p × n) → (p × k′)."""
        X = np.atleast_2d(X)
        return np.stack([np.bincount(self.bucket, weights=self.sign * x, minlength=self.k_prime)
                         for x in X])


def quantise_rows(Y: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """b-bit integers per row with one scale per row: Y ≈ Q · scale[:, None]."""
    peak = np.abs(Y).max(axis=1)
    top = 2 ** (bits - 1) - 1
    scale = np.where(peak > 0, peak / top, 1.0)
    return np.rint(Y / scale[:, None]).astype(np.int64), scale


def integer_gram(Yq: np.ndarray) -> np.ndarray:
    """Y Yᵀ of integer sketches, exact in int64 up to the final float64: values of more
    than 16 bits are split into 16-bit halves so no partial product overflows."""
    Yq = np.asarray(Yq, dtype=np.int64)
    if np.abs(Yq).max(initial=0) < 2**15:
        return (Yq @ Yq.T).astype(np.float64)
    hi, lo = Yq >> 16, Yq & 0xFFFF  # Yq = hi·2^16 + lo, 0 ≤ lo < 2^16
    return (np.ldexp((hi @ hi.T).astype(np.float64), 32)
            + np.ldexp((hi @ lo.T + lo @ hi.T).astype(np.float64), 16)
            + (lo @ lo.T).astype(np.float64))


@dataclass
class OffloadStats:
    checks_failed: list[int] = field(default_factory=list)  #: workers that failed a check
    checksum_failed: list[int] = field(default_factory=list)  #: … the public checksum
    gram_failed: list[int] = field(default_factory=list)  #: … the secret Gram check
    quarantined: list[int] = field(default_factory=list)  #: workers left out of this step
    fallback: bool = False  #: the step went to the PS (full FA)
    clamped_values: int = 0  #: phase-2 values the switch bound clamped
    sketch_bytes_per_worker: int = 0
    #: measured: the sketched Gram and FA's IRLS with the quantized eigensolver
    control_plane_s: float = 0.0
    #: measured: norms, sketch and quantisation of all p rows, over p (each worker
    #: sketches its own gradient, in parallel with the others)
    worker_sketch_s: float = 0.0
    phase2: AllreduceStats | None = None


class OffloadedFA:
    """FA split between the switch and its control plane (see the module docstring).

    ``k_prime`` sketch size, ``W`` eigensolver word length, ``solver`` the quantized
    eigensolver (``"bfp"`` two-block floating point, ``"fixed"`` one shared
    exponent; :mod:`innet.quant.fixed_eigen`), ``b`` sketch bits; the
    other FA parameters go to :class:`FlagAggregator`. ``switch`` is the phase-2
    allreduce (default: a lossless one). ``defences`` turns the checksum and the bound
    on. ``tol`` is the checksum tolerance, relative to the honest checksum's scale.
    """

    def __init__(self, p: int, f: int = 0, k_prime: int = 4096, W: int = 24, b: int = 16,
                 solver: str = "bfp", seed: int = 0, switch: SwitchAllreduce | None = None,
                 defences: bool = True, tol: float = 0.02, check_buckets: int | None = None,
                 quarantine: int = 10, secret_buckets: int = 64,
                 secret_tol: float | None = None, **fa_params):
        self.check_params(k_prime, W, b, solver, quarantine, secret_buckets, secret_tol)
        self.quarantine = quarantine
        #: worker → steps of quarantine left
        self.quarantine_left: dict[int, int] = {}
        self.p, self.f, self.k_prime, self.W, self.b = p, f, k_prime, W, b
        self.seed, self.defences, self.tol = seed, defences, tol
        #: secret buckets per step: every bucket by default (a lie in any bucket is
        #: seen; only the secret signs can hide it), or a random subset of this size
        self.check_buckets = k_prime if check_buckets is None else min(check_buckets, k_prime)
        self.fa = FlagAggregator(f=f, eigh=torch_eigh(W, solver), **fa_params)
        #: FA's IRLS in one compiled call (innet.quant.control_plane) where it covers
        #: the setting: the two-block solver, paper mode, λ = 0 (the default)
        self.compiled = solver == "bfp" and self.fa.mode == "paper" and self.fa.lam == 0
        if self.compiled:  # compile (or load from Numba's cache) now, not inside a timed step
            fa_irls(np.eye(2), 1, 1, 0.0, 1e-7, 0, W, 1)
        self.full = FlagAggregator(f=f, **fa_params)  # the PS fallback
        self.switch = switch or SwitchAllreduce(p, 64, 512, seed=seed)
        self.sketch_k = 64 if k_prime % 64 == 0 else 1  #: values per phase-1 packet
        self._store: SketchSwitch | None = None
        #: the secret sketch: secret_buckets × k buckets per worker, drawn per step
        self.secret_buckets = secret_buckets
        m = secret_buckets * self.switch.k
        #: tolerance of the secret Gram check, relative to |c_i c_j|‖g_i‖‖g_j‖: six
        #: standard deviations of the two sketches' honest error (a CountSketch with m
        #: buckets estimates an inner product within sd √(2/m) of the norms' product)
        self.secret_tol = (6 * np.sqrt(2 / m + 2 / k_prime) if secret_tol is None
                           else secret_tol)
        self.guard: GuardSwitch | None = None
        self._sketch: CountSketch | None = None
        self._secret = np.random.default_rng(seed + 7919)  # the control plane's, not shared
        self.step = 0
        self.last_c: np.ndarray | None = None
        #: optional f(V, honest c, sketch) -> V: what Byzantine workers send in phase 2
        self.phase2_attack = None

    @staticmethod
    def check_params(k_prime: int, W: int, b: int, solver: str, quarantine: int = 10,
                     secret_buckets: int = 64, secret_tol: float | None = None) -> None:
        """The offload's own parameters, checked; the ValueError's message starts with
        the parameter's name (scenario validation reports it under that key)."""
        if not isinstance(k_prime, int) or k_prime < 1:
            raise ValueError(f"k_prime: the sketch size must be an integer >= 1, got {k_prime!r}")
        if not isinstance(W, int) or not 12 <= W <= 32:
            raise ValueError(f"W: the eigensolver's word length must be in 12..32, got {W!r}")
        if not isinstance(b, int) or not 2 <= b <= 31:
            raise ValueError(f"b: sketch bits must be in 2..31, got {b!r}")
        if solver not in SOLVERS:
            raise ValueError(f"solver: {solver!r} is not one of {', '.join(SOLVERS)}")
        if not isinstance(quarantine, int) or isinstance(quarantine, bool) or quarantine < 0:
            raise ValueError(f"quarantine: steps must be an integer >= 0, got {quarantine!r}")
        if (not isinstance(secret_buckets, int) or isinstance(secret_buckets, bool)
                or not 1 <= secret_buckets <= 4096):
            raise ValueError(f"secret_buckets: must be an integer in 1..4096, got "
                             f"{secret_buckets!r}")
        if secret_tol is not None and not (isinstance(secret_tol, (int, float))
                                           and 0 < secret_tol < float("inf")):
            raise ValueError(f"secret_tol: must be a number > 0, got {secret_tol!r}")

    def worker_cost(self, n: int) -> Cost:
        """Modelled cost of one worker's phase-1 work on its n values: the norm pass,
        the count-sketch pass (scale, sign, bucket add) and the b-bit quantisation."""
        return Cost(2.0 * n * VALUE_BYTES + 4.0 * self.k_prime, 5.0 * n + 2.0 * self.k_prime, 3)

    def control_plane_cost(self, p: int) -> Cost:
        """Modelled cost of the control plane's part: the integer Gram of the p
        sketches (2·p²·k′ operations) and FA's IRLS on it at its iteration cap."""
        return (Cost(p * self.k_prime * 4.0, 2.0 * p * p * self.k_prime, 1)
                + self.fa.solve_cost(p))

    def sketch_of(self, n: int) -> CountSketch:
        if self._sketch is None or self._sketch.n != n:
            self._sketch = CountSketch(n, self.k_prime, self.seed)
        return self._sketch

    # -- phase 1 ---------------------------------------------------------------------
    def coefficients(self, G: np.ndarray, stats: OffloadStats | None = None):
        """Phase 1: norms, quantised sketches (workers), the sketch packets through the
        switch's ``sketch_store`` program, the sketched Gram from its registers and
        FA's c (control plane). ``stats`` receives the measured times of both parts."""
        tick = time.perf_counter()
        norms = np.linalg.norm(G, axis=1)
        unit = G / np.where(norms > 0, norms, 1.0)[:, None]
        Yq, scale = quantise_rows(self.sketch_of(G.shape[1])(unit), self.b)
        tock = time.perf_counter()
        if stats is not None:
            stats.worker_sketch_s = (tock - tick) / G.shape[0]
        Yq = self._through_sketch_store(Yq)
        c = self._control_plane(Yq, norms)
        if stats is not None:
            stats.control_plane_s = time.perf_counter() - tock
        return c, norms, Yq, scale

    def _through_sketch_store(self, Yq: np.ndarray) -> np.ndarray:
        """The workers' sketch packets through the switch's phase-1 program; the
        control plane reads the stored sketches back from its registers."""
        p = Yq.shape[0]
        if self._store is None or self._store.p != p:
            self._store = SketchSwitch(p, self.k_prime, self.sketch_k)
        self._store.clear()
        self._store.send_sketches(Yq)
        if not self._store.complete:  # cannot happen on a lossless phase 1
            raise RuntimeError(f"phase 1 incomplete: {self._store.drop_counts()}")
        return self._store.read()

    def _control_plane(self, Yq: np.ndarray, norms: np.ndarray) -> np.ndarray:
        """FA's coefficients from the switch's integer sketches and the norms."""
        Kg = self._sketched_gram(Yq, norms)
        if self.compiled:
            fa = self.fa
            c, _, _ = fa_irls(Kg, fa.m or default_m(Kg.shape[0]), fa.iters, fa.tol,
                                  fa.eps, OUTPUT_CODES[fa.output], self.W, 20)
            return c
        return self.fa.solve_gram(torch.from_numpy(Kg)).c.numpy()

    @staticmethod
    def _sketched_gram(Yq: np.ndarray, norms: np.ndarray) -> np.ndarray:
        """‖g_i‖‖g_j‖·cos(y_i, y_j): the Gram matrix phase 1 promises."""
        dots = integer_gram(Yq)
        sk_norm = np.sqrt(np.diag(dots))
        safe = np.where(sk_norm > 0, sk_norm, 1.0)
        return dots / np.outer(safe, safe) * np.outer(norms, norms)

    # -- phase 2 ---------------------------------------------------------------------
    def aggregate(self, G) -> tuple[np.ndarray, OffloadStats]:
        """The offloaded FA aggregate of G (p × n) and what happened."""
        G = G.detach().cpu().numpy() if isinstance(G, torch.Tensor) else np.asarray(G)
        G = G.astype(np.float64)
        stats = OffloadStats(sketch_bytes_per_worker=self.k_prime * self.b // 8 + 4)
        p = G.shape[0]
        out = sorted(w for w, left in self.quarantine_left.items() if left > 0 and w < p)
        active = np.array([i for i in range(p) if i not in out], dtype=np.int64)
        stats.quarantined = out
        c_active, norms_a, Yq_a, scale_a = self.coefficients(G[active], stats)
        c = np.zeros(p)
        c[active] = c_active  # quarantined workers: out of the Gram, c_i = 0
        norms = np.linalg.norm(G, axis=1)
        Yq = np.zeros((p, Yq_a.shape[1]), dtype=Yq_a.dtype)
        Yq[active] = Yq_a
        scale = np.zeros(p)
        scale[active] = scale_a
        K = np.zeros((p, p))
        K[np.ix_(active, active)] = self._sketched_gram(Yq_a, norms_a)
        self.quarantine_left = {w: left - 1 for w, left in self.quarantine_left.items()
                                if left > 1}
        self.last_c = c  #: the control plane's coefficients of the last step
        V = c[:, None] * G  # what honest workers send
        if self.phase2_attack is not None:
            V = self.phase2_attack(V.copy(), c, self.sketch_of(G.shape[1]))
        V = V.astype(np.float32)
        sw = self.switch.switch
        if self.defences:
            plan = self._arm_guard(c, norms, G.shape[1])
            self.switch.guard = self.guard
            if sw is not None:  # no honest block needs a larger exponent than e_ref
                sw.exponent_cap = self.guard.e_ref
        try:
            total, stats.phase2 = self.switch.allreduce(V)
        finally:
            self.switch.guard = None
            if sw is not None:
                sw.exponent_cap = 127
        if self.defences:
            public, gram, stats.clamped_values = self._check(plan, c, norms, Yq, scale, K,
                                                             active)
            stats.checksum_failed, stats.gram_failed = public, gram
            stats.checks_failed = sorted(set(public) | set(gram))
        self.step += 1
        if stats.checks_failed:
            stats.fallback = True  # the PS runs full FA on the float gradients
            if self.quarantine:
                for w in stats.checks_failed:
                    self.quarantine_left[w] = self.quarantine
            return self.full.solve(torch.from_numpy(G)).aggregate.numpy(), stats
        return total, stats

    def _arm_guard(self, c, norms, n: int) -> dict:
        """Control plane, before phase 2: the step's reference exponent (2^e_ref bounds
        every honest value |c_i·g_ij| ≤ |c_i|·‖g_i‖), each worker's bound in that
        scale, the public check's secret bucket signs ρ (codes ρ_h(j)·σ(j) per
        coordinate, 0 outside the checked buckets) and the secret sketch's tables."""
        p, k = len(c), self.switch.k
        C = -(-n // k)
        if self.guard is None or self.guard.p != p or self.guard.chunks < C:
            self.guard = GuardSwitch(p, k, chunks=max(C, 1), secret_buckets=self.secret_buckets)
        bound = np.abs(c) * norms
        top = float(bound.max(initial=0.0))
        e_ref = int(np.clip(np.frexp(top)[1] if top > 0 else EXP_MIN, EXP_MIN, EXP_MAX))
        f_ref = float(scale_of(e_ref, p))
        bound_ref = np.minimum(np.floor(bound * f_ref) + 1, 2**31 - 1).astype(np.int32)
        sk = self.sketch_of(n)
        R = self._secret.choice(self.k_prime, size=self.check_buckets, replace=False)
        rho = np.zeros(self.k_prime)
        rho[R] = self._secret.choice(np.array([-1.0, 1.0]), size=len(R))
        codes = np.zeros(C * k, np.int8)
        codes[:n] = (rho[sk.bucket] * sk.sign).astype(np.int8)
        bucket_of = self._secret.integers(0, self.secret_buckets, size=C)
        signs = self._secret.choice(np.array([-1, 1], np.int8), size=(C, k))
        self.guard.arm(bound_ref, e_ref, codes.reshape(C, k), bucket_of, signs)
        return {"f_ref": f_ref, "rho": rho, "R": R, "checked": int((codes != 0).sum())}

    def _check(self, plan, c, norms, Yq, scale, K, active) -> tuple[list[int], int]:
        """The control plane reads the guard's registers and checks each active worker:

        * public checksum: Σ_j ρ_h(j)·σ(j)·v_j (the switch's, in the reference scale)
          against c_i·‖g_i‖·Σ_r ρ_r·ŷ_ir from phase 1;
        * secret Gram: the phase-2 vectors' Gram from the secret sketch, Z·Zᵀ, against
          c_i·c_j·K_ij from phase 1. Worker i fails if its own entry (its norm) is off by
          more than ``secret_tol`` × |c_i|²‖g_i‖², or more than f of its entries with
          the other workers are off by more than ``secret_tol`` × |c_i c_j|‖g_i‖‖g_j‖.

        Returns (workers failing the checksum, workers failing the Gram check, clamped
        lanes)."""
        checksum, secret, clamped = self.guard.read()
        unit = 1.0 / plan["f_ref"]
        rho, R = plan["rho"], plan["R"]
        y = Yq * scale[:, None]  # phase-1 sketches, dequantised
        observed = checksum * unit
        expected = c * norms * (y @ rho)
        # honest deviation: the sketch's b-bit rounding on the |R| secret buckets, and
        # phase 2's rounding (half a unit of the packet's scale, at most half a unit of
        # the reference scale) plus the shift's truncation (< 1 unit) per checked value
        size = np.abs(c) * norms * np.sqrt((y[:, R] ** 2).sum(axis=1))
        slack = (self.tol * size + np.abs(c) * norms * len(R) * scale
                 + 1.5 * unit * plan["checked"])
        public = np.abs(observed - expected) > slack + 1e-12
        Z = secret * unit
        Gz = Z @ Z.T
        B = np.abs(c) * norms
        S = np.outer(B, B)
        with np.errstate(divide="ignore", invalid="ignore"):
            dev = np.where(S > 0, np.abs(Gz - np.outer(c, c) * K) / S, 0.0)
        act = np.zeros(len(c), bool)
        act[active] = True
        act &= B > 0
        gram = act & (np.diag(dev) > self.secret_tol)  # its norm is not what it claimed
        others = act & ~gram
        off_diag = (dev > self.secret_tol) & others[None, :] & ~np.eye(len(c), dtype=bool)
        gram |= others & (off_diag.sum(axis=1) > self.f)  # disagrees with more than f others
        return (np.flatnonzero(public & act).tolist(), np.flatnonzero(gram).tolist(),
                int(clamped.sum()))


# -- phase-2 attacks (the worker sent an honest sketch in phase 1) ---------------------
def scaled_phase2(byzantine: list[int], factor: float = -10.0):
    """Send factor·c_i·g_i instead of c_i·g_i."""
    def attack(V, c, sketch):
        V[byzantine] *= factor
        return V
    return attack


def replace_phase2(byzantine: list[int], seed: int = 0):
    """Send a random vector of the same norm as c_i·g_i."""
    def attack(V, c, sketch):
        rng = np.random.default_rng(seed)
        for i in byzantine:
            r = rng.normal(size=V.shape[1])
            V[i] = r * np.linalg.norm(V[i]) / np.linalg.norm(r)
        return V
    return attack


def null_space_phase2(byzantine: list[int], magnitude: float = 1.0):
    """Add δ with Sδ = 0 for the public sketch: in every bucket, pair coordinates and
    push them in opposite sketch directions (+a·σ on one, −a·σ on the other), with
    a = magnitude × the largest |c_i·g_ij| (so the bound does not clip it)."""
    def attack(V, c, sketch):
        order = np.argsort(sketch.bucket, kind="stable")
        b = sketch.bucket[order]
        same = np.flatnonzero(b[1:] == b[:-1])
        same = same[np.concatenate([[True], np.diff(same) > 1])] if len(same) else same
        first, second = order[same], order[same + 1]
        for i in byzantine:
            a = magnitude * np.abs(V[i]).max()
            # aim δ against the honest direction: on `first` push opposite to the sum
            push = -np.sign(V.sum(axis=0)[first]) * a
            V[i, first] += push
            V[i, second] -= push * sketch.sign[first] * sketch.sign[second]
        return V
    return attack
