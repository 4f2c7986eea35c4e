"""Centered clipping (Karimireddy et al. 2021; REFERENCE §2)."""

from __future__ import annotations

import numba
import numpy as np
import torch

from innet.aggregators.base import Aggregator, Cost, NonFiniteGradientError, passes
from innet.aggregators.sorting_network import BLOCK, EXPONENT


@numba.njit(cache=True, parallel=True)
def _clip_pass(G, bits, exponent, v, w, a, n_threads, v_out, sq, bad):
    """One pass over G: v_out = a·v + Σ_i w_i g_i (float64 sums, rounded once to G's
    dtype) and sq[tid, i] = thread tid's share of ‖g_i − v_out‖² (float64). bad[tid, i]
    is the largest exponent field seen in row i (equal to ``exponent`` exactly when
    the row holds NaN/Inf). The squared distances accumulate lane by lane in a (p,
    BLOCK) array and are summed once at the end: a running scalar sum would be one
    serial chain of float adds, which LLVM may not reorder into SIMD."""
    p, n = G.shape
    n_blocks = (n + BLOCK - 1) // BLOCK
    for tid in numba.prange(n_threads):
        acc = np.empty(BLOCK, np.float64)
        lanes = np.zeros((p, BLOCK), np.float64)
        for blk in range(tid, n_blocks, n_threads):
            start = blk * BLOCK
            stop = min(start + BLOCK, n)
            width = stop - start
            # slices, not start + t offsets: a possibly negative index keeps Numba's
            # wrap-around test in the loop, and that stops LLVM vectorising it
            v_in = v[start:stop]
            vb = v_out[start:stop]
            for t in range(width):
                acc[t] = a * v_in[t]
            for i in range(p):
                row = G[i, start:stop]
                word = bits[i, start:stop]
                wi = w[i]
                top = bad[tid, i]
                for t in range(width):
                    acc[t] += wi * row[t]
                    e = word[t] & exponent
                    top = e if e > top else top
                bad[tid, i] = top
            for t in range(width):
                vb[t] = acc[t]
            for i in range(p):
                row = G[i, start:stop]
                lane = lanes[i]
                for t in range(width):
                    d = np.float64(row[t]) - np.float64(vb[t])
                    lane[t] += d * d
        for i in range(p):
            sq[tid, i] = lanes[i].sum()


def _cpu_clipping(G: np.ndarray, v: np.ndarray, tau: float, iters: int) -> np.ndarray:
    """``iters`` steps v ← v + (1/p)Σ(g_i − v)·min(1, τ/‖g_i − v‖) in iters + 1 passes:
    each pass applies one step and measures the distances the next step needs."""
    p, n = G.shape
    utype, mask = EXPONENT[G.dtype.type]
    bits = G.view(utype)
    n_threads = max(1, min(numba.get_num_threads(), -(-n // BLOCK)))
    bad = np.zeros((n_threads, p), utype)
    sq = np.zeros((n_threads, p))
    out = np.empty(n, G.dtype)
    _clip_pass(G, bits, utype(mask), v, np.zeros(p), 1.0, n_threads, out, sq, bad)
    rows = np.flatnonzero((bad == mask).any(axis=0))
    if rows.size:
        raise NonFiniteGradientError(rows.tolist())
    for _ in range(iters):
        norms = np.sqrt(sq.sum(axis=0))
        w = np.minimum(1.0, tau / np.maximum(norms, 1e-300)) / p
        sq[:] = 0.0
        v = out.copy()
        _clip_pass(G, bits, utype(mask), v, w, 1.0 - w.sum(), n_threads, out, sq, bad)
    return out


class CenteredClipping(Aggregator):
    """v ← v + (1/p) Σ (g_i − v)·min(1, τ/‖g_i − v‖), ``iters`` times, from the previous
    output (zero at the first call). The rule is stateful: :meth:`reset` forgets v.

    On the CPU a step is one fused pass (the new v and the distances to it), so L
    steps read G L + 1 times; on CUDA torch runs the step as written."""

    name = "centered_clipping"
    finite_check_fused = True  # the CPU kernel's first pass reads the exponent bits

    def __init__(self, f: int = 0, tau: float = 1.0, iters: int = 3):
        super().__init__(f)
        if tau <= 0:
            raise ValueError(f"{self.name}: tau must be > 0, got {tau!r}")
        if iters < 1:
            raise ValueError(f"{self.name}: iters must be >= 1, got {iters!r}")
        self.tau, self.iters = float(tau), int(iters)
        self._v: torch.Tensor | None = None

    def reset(self) -> None:
        self._v = None

    def state(self) -> dict:
        return {"v": self._v}

    def load_state(self, state: dict) -> None:
        self._v = state["v"]

    def aggregate(self, G: torch.Tensor) -> torch.Tensor:
        v = self._v
        if v is None or v.shape != G.shape[1:] or v.device != G.device or v.dtype != G.dtype:
            v = torch.zeros(G.shape[1], dtype=G.dtype, device=G.device)
        if self.fuses_finite_check(G):
            X = G.detach().contiguous().numpy()
            v = torch.from_numpy(_cpu_clipping(X, v.numpy(), self.tau, self.iters))
        else:
            for _ in range(self.iters):
                diff = G - v
                norms = torch.linalg.vector_norm(diff, dim=1, dtype=torch.float64)
                scale = torch.clamp(self.tau / torch.clamp(norms, min=1e-300), max=1.0)
                v = v + (scale.to(G.dtype)[:, None] * diff).mean(dim=0)
        self._v = v.detach().clone()
        return v

    def cost(self, p: int, n: int) -> Cost:
        # L + 1 fused passes (distances and the clipped update), 4 operations a value
        return passes(p, n, self.iters + 1, 4.0, self.iters + 1)
