"""FA's IRLS compiled for a switch's control plane: the offload's phase-1 solve in one
Numba call, with the two-block floating-point eigensolver inside every step.

It runs the ``paper`` mode of :class:`innet.aggregators.flag.FlagAggregator` with
λ = 0 (the offload's setting; other settings stay on the Python path) on the p×p
Gram matrix: start from Y = the top-m eigenvectors of the normalised Gram K, then
reweight w_i = (|1 − ‖Yᵀu_i‖²| + ε)^(−1/4) and take the top-m eigenvectors of
diag(w)·K·diag(w), keeping a step only while the objective Σ √|1 − ‖Yᵀu_i‖²| falls.
Y is never formed: Y = U·C with C (p × m), so ‖Yᵀu_i‖² = (K C Cᵀ K)_ii. Out come the
coefficients c of the aggregate Σ c_i g_i. With W = 0 the eigensolver is float64
LAPACK and c equals ``FlagAggregator.solve_gram``'s to rounding (a test holds them
equal); with the W-bit solver both land equally close to float64 FA, but not on
the same bits: the weights (|1 − P_ii| + ε)^(−1/4) amplify last-bit differences in
the order of operations, and the W-bit rounding turns them into W-bit differences.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from innet.quant.fixed_eigen import eigh_bfp_core

#: FlagAggregator output modes, by the code the kernel takes
OUTPUT_CODES = {"paper": 0, "reference": 1, "median_norm": 2}


@numba.njit(cache=True)
def _subspace(K, r, m, W, max_sweeps):
    """C (p×m) with Y = U·C the top-m eigenvectors of diag(r)·K·diag(r), scaled by
    1/√λ (0 where λ is negligible)."""
    p = K.shape[0]
    M = np.empty((p, p))
    for i in range(p):
        for j in range(p):
            M[i, j] = r[i] * K[i, j] * r[j]
    if W == 0:
        evals, V = np.linalg.eigh(M)  # float64 LAPACK: the reference setting
    else:
        evals, V = eigh_bfp_core(M, W, max_sweeps)
    top = max(evals[p - 1], 1e-300)
    C = np.zeros((p, m))
    for k in range(m):
        lam = evals[p - 1 - k]
        if lam > 1e-13 * top:
            inv = 1.0 / math.sqrt(lam)
            for i in range(p):
                C[i, k] = r[i] * V[i, p - 1 - k] * inv
    return C


@numba.njit(cache=True)
def _projections(K, C, valid):
    """diag(K C Cᵀ K) and the objective Σ_valid √|1 − P_ii|, in FlagAggregator's order
    of operations (its weights (|1 − P_ii| + ε)^(−1/4) amplify the last bits)."""
    P = np.diag(((K @ C) @ C.T) @ K).copy()
    objective = 0.0
    for i in range(K.shape[0]):
        if valid[i]:
            objective += math.sqrt(abs(1.0 - P[i]))
    return P, objective


@numba.njit(cache=True)
def fa_irls(Kg, m, iters, tol, eps, output, W, max_sweeps):
    """Coefficients c (p,) of FA on the Gram matrix Kg (p×p float64), its IRLS weights
    w, and the reweighted steps taken. ``m`` ≥ 1 the subspace dimension (capped at
    the number of non-zero gradients), ``output`` one of :data:`OUTPUT_CODES`, ``W``
    the two-block solver's word length (0: float64 LAPACK instead)."""
    p = Kg.shape[0]
    norms = np.sqrt(np.maximum(np.diag(Kg).copy(), 0.0))
    valid = norms > 0
    safe = np.where(valid, norms, 1.0)
    K = np.zeros((p, p))
    for i in range(p):
        for j in range(p):
            if valid[i] and valid[j]:
                K[i, j] = Kg[i, j] / safe[i] / safe[j]
    m = min(m, int(valid.sum()))
    c = np.zeros(p)
    w = valid.astype(np.float64)
    if m == 0:
        return c, np.zeros(p), 0
    C = _subspace(K, w, m, W, max_sweeps)
    P, objective = _projections(K, C, valid)
    steps = 0
    for _ in range(iters):
        w_new = np.where(valid, (np.abs(1.0 - P) + eps) ** -0.25, 0.0)
        C_new = _subspace(K, np.sqrt(w_new * w_new), m, W, max_sweeps)  # S = diag(w²)
        P_new, obj_new = _projections(K, C_new, valid)
        if obj_new > objective:  # uphill: keep the previous subspace
            break
        decrease = objective - obj_new
        w, C, P, objective = w_new, C_new, P_new, obj_new
        steps += 1
        if decrease <= tol:
            break
    ones = valid.astype(np.float64)
    if output == 0:  # (1/p)·Y Yᵀ G 1
        u = C @ (C.T @ (K @ norms)) / p
    elif output == 1:  # (1/m)·Y Yᵀ U 1
        u = C @ (C.T @ (K @ ones)) / m
    else:  # median‖g‖ · (1/p)·Y Yᵀ U 1
        u = C @ (C.T @ (K @ ones)) * (np.median(norms[valid]) / p)
    for i in range(p):
        c[i] = u[i] / safe[i] if valid[i] else 0.0
    return c, w, steps
