"""Fixed-point one-sided (Hestenes) Jacobi SVD, fixed-point subspace iteration, and
block-floating-point input with one exponent per block.

* :func:`svd_fixed`: for a tall n×p matrix (FA's [w_1u_1 … w_pu_p], REFERENCE §1.2)
  rotate pairs of columns until they are orthogonal; the column norms are the
  singular values, the normalised columns the left singular vectors, the
  accumulated rotations the right ones. Integer only inside the kernel: column dot
  products accumulate W-bit products in int64 after a rounding shift chosen so that
  n of them cannot overflow, and the rotation is the same integer rotation as the
  two-sided solver's (:mod:`innet.quant.fixed_eigen`).
* :func:`subspace_eigh_fixed`: orthogonal (subspace) iteration for the top-m
  eigenvectors of a symmetric positive semi-definite p×p matrix, Z = A·Q then
  modified Gram–Schmidt with integer square roots and rounding divisions, then a
  Rayleigh–Ritz step (QᵀAQ, m×m) solved by the fixed-point Jacobi. It needs only
  m columns, not p, and a fixed number of multiply–accumulate passes.
* :func:`to_bfp_blocks`: a matrix stored with a shared exponent per b×b block and
  W-bit mantissas (the storage/transport format), for measuring how much of the
  low-W error is input rounding with one exponent for the whole matrix.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from innet.quant.fixed_eigen import (
    _div_round,
    _identity_q,
    _isqrt_round,
    _mul_shift,
    eigh_fixed,
    jacobi_fixed,
    rotation,
    to_fixed,
)


@numba.njit(cache=True)
def hestenes_fixed(A, W, acc_shift, max_sweeps, V):
    """In place: the columns of A (n×p int64, |a| < 2^(W−1)) become mutually
    orthogonal; V (p×p) receives the right singular vectors in Q(W−2). Column dot
    products are sums of round(a·b / 2^acc_shift). Returns the sweeps run."""
    n, p = A.shape
    F = W - 2
    _identity_q(V, F)
    sweeps = 0
    for _ in range(max_sweeps):
        rotated = False
        for ip in range(p - 1):
            for iq in range(ip + 1, p):
                alpha = np.int64(0)
                beta = np.int64(0)
                gamma = np.int64(0)
                for k in range(n):
                    a, b = A[k, ip], A[k, iq]
                    alpha += _mul_shift(a, a, acc_shift) if acc_shift > 0 else a * a
                    beta += _mul_shift(b, b, acc_shift) if acc_shift > 0 else b * b
                    gamma += _mul_shift(a, b, acc_shift) if acc_shift > 0 else a * b
                # orthogonal to the working precision: |cos| ≤ 2^−F
                if abs(gamma) <= max((_isqrt_round(alpha) * _isqrt_round(beta)) >> F, 1):
                    continue
                rotated = True
                c, s, _ = rotation(beta - alpha, 2 * gamma, F)
                for k in range(n):
                    a, b = A[k, ip], A[k, iq]
                    A[k, ip] = _mul_shift(c, a, F) - _mul_shift(s, b, F)
                    A[k, iq] = _mul_shift(s, a, F) + _mul_shift(c, b, F)
                for k in range(p):
                    a, b = V[k, ip], V[k, iq]
                    V[k, ip] = _mul_shift(c, a, F) - _mul_shift(s, b, F)
                    V[k, iq] = _mul_shift(s, a, F) + _mul_shift(c, b, F)
        if not rotated:
            break
        sweeps += 1
    return sweeps


def svd_fixed(A: np.ndarray, W: int = 24, max_sweeps: int = 15
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD of a tall matrix (n ≥ p) by fixed-point one-sided Jacobi with word
    length W (12..32): (U n×p, singular values descending, Vᵀ p×p), like
    ``numpy.linalg.svd(A, full_matrices=False)``."""
    if not 12 <= W <= 32:
        raise ValueError(f"word length W must be in 12..32, got {W}")
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] < A.shape[1]:
        raise ValueError(f"expected a tall matrix (n >= p), got shape {A.shape}")
    n, p = A.shape
    # one guard bit: a rotation mixes two columns, |c·a − s·b| ≤ √2·max
    M, scale = to_fixed(A, W, guard=1)
    acc_shift = max(0, 2 * (W - 1) + math.ceil(math.log2(max(n, 2))) - 62)
    V = np.empty((p, p), np.int64)
    hestenes_fixed(M, W, acc_shift, max_sweeps, V)
    cols = M.astype(np.float64) * scale
    sigma = np.sqrt((cols**2).sum(axis=0))
    order = np.argsort(-sigma, kind="stable")
    safe = np.where(sigma > 0, sigma, 1.0)
    U = cols / safe
    Vf = V.astype(np.float64) / float(1 << (W - 2))
    return U[:, order], sigma[order], Vf[:, order].T


@numba.njit(cache=True)
def subspace_iteration_fixed(A, Q, W, iters):
    """In place: Q (p×m int64, Q(W−2) columns) becomes an orthonormal basis of the
    dominant m-dimensional invariant subspace of A (p×p int64, symmetric PSD) after
    ``iters`` rounds of Z = A·Q and modified Gram–Schmidt."""
    p, m = Q.shape
    F = W - 2
    Z = np.empty((p, m), np.int64)
    for _ in range(iters):
        for i in range(p):
            for j in range(m):
                acc = np.int64(0)
                for k in range(p):
                    acc += _mul_shift(A[i, k], Q[k, j], F)
                Z[i, j] = acc
        for j in range(m):
            for i in range(j):  # remove the earlier (already orthonormal) directions
                r = np.int64(0)
                for k in range(p):
                    r += _mul_shift(Q[k, i], Z[k, j], F)
                for k in range(p):
                    Z[k, j] -= _mul_shift(r, Q[k, i], F)
            big = np.int64(0)
            for k in range(p):
                big = max(big, abs(Z[k, j]))
            sh = 0
            while (big >> sh) >= (np.int64(1) << 26):  # squares of p entries fit int64
                sh += 1
            s = np.int64(0)
            for k in range(p):
                z = Z[k, j] >> sh
                s += z * z
            nrm = _isqrt_round(s)
            for k in range(p):
                Q[k, j] = _div_round((Z[k, j] >> sh) << F, nrm) if nrm > 0 else 0
    return iters


@numba.njit(cache=True)
def _rayleigh(M, Q, F):
    """QᵀMQ with Q in Q(F): m×m in M's units, symmetrised."""
    p, m = Q.shape
    Z = np.zeros((p, m), np.int64)
    for i in range(p):
        for j in range(m):
            for k in range(p):
                Z[i, j] += _mul_shift(M[i, k], Q[k, j], F)
    H = np.zeros((m, m), np.int64)
    for i in range(m):
        for j in range(i, m):
            acc = np.int64(0)
            for k in range(p):
                acc += _mul_shift(Q[k, i], Z[k, j], F)
            H[i, j] = acc
            H[j, i] = acc
    return H


@numba.njit(cache=True)
def _matmul_q(A, B, F):
    """A·B for Q(F) matrices, result in Q(F)."""
    n, m = A.shape[0], B.shape[1]
    out = np.zeros((n, m), np.int64)
    for i in range(n):
        for j in range(m):
            for k in range(A.shape[1]):
                out[i, j] += _mul_shift(A[i, k], B[k, j], F)
    return out


def subspace_eigh_fixed(A: np.ndarray, m: int, W: int = 24, iters: int = 30,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Top-m eigenpairs (ascending, like ``eigh``) of a symmetric PSD matrix by
    fixed-point subspace iteration and a fixed-point Rayleigh–Ritz step."""
    if not 12 <= W <= 32:
        raise ValueError(f"word length W must be in 12..32, got {W}")
    A = np.asarray(A, dtype=np.float64)
    p = A.shape[0]
    if A.ndim != 2 or A.shape[1] != p or not 1 <= m <= p:
        raise ValueError(f"expected a square matrix and 1 <= m <= p, got {A.shape}, m={m}")
    # Gershgorin headroom: the Ritz values (QᵀAQ's diagonal) reach λ_max ≤ max row sum
    M, scale = to_fixed((A + A.T) / 2, W)
    F = W - 2
    rng = np.random.default_rng(seed)  # a ±1 start cannot be orthogonal to the answer
    Q0, _ = np.linalg.qr(rng.choice([-1.0, 1.0], size=(p, m)))
    Q = np.rint(Q0 * (1 << F)).astype(np.int64)
    subspace_iteration_fixed(M, Q, W, iters)
    # Rayleigh–Ritz: H = QᵀAQ (m×m, in A's fixed-point units, integer), then the
    # fixed-point Jacobi on H and the Ritz vectors Q·V_H (integer, Q(F))
    H = _rayleigh(M, Q, F)
    Vh = np.empty_like(H)
    jacobi_fixed(H, W, 12, 1, Vh)
    evals = np.diag(H).astype(np.float64) * scale
    vecs = _matmul_q(Q, Vh, F).astype(np.float64) / float(1 << F)
    order = np.argsort(evals, kind="stable")
    return evals[order], vecs[:, order]


def to_bfp_blocks(A: np.ndarray, W: int, block: int) -> np.ndarray:
    """A as stored in block floating point: every block×block tile shares one
    exponent (its peak below 2^(W−1) in mantissa units); returns the dequantised
    matrix. ``block = p`` is one exponent for the whole matrix."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    A = np.asarray(A, dtype=np.float64)
    out = np.empty_like(A)
    for r in range(0, A.shape[0], block):  # one step per tile, not per element
        for c in range(0, A.shape[1], block):
            tile = A[r:r + block, c:c + block]
            M, scale = to_fixed(tile, W, guard=0)
            out[r:r + block, c:c + block] = M * scale
    return out


def top_subspace_angle_bfp(A: np.ndarray, m: int, W_store: int, block: int,
                           W_solve: int = 32) -> float:
    """Max principal angle of the top-m eigenvectors when A is stored in W_store-bit
    block floating point (per block exponent) and solved at W_solve bits."""
    from innet.quant.fixed_eigen import principal_angles

    stored = to_bfp_blocks(A, W_store, block)
    _, V = eigh_fixed((stored + stored.T) / 2, W_solve)
    _, R = np.linalg.eigh(A)
    return float(principal_angles(V[:, -m:], R[:, -m:]).max())
