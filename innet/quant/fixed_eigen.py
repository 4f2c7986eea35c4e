"""Fixed-point symmetric eigendecomposition (two-sided cyclic Jacobi) for the control
plane of a switch, and the metrics that compare it with LAPACK.

The matrix enters in block floating point: one shared exponent for the whole matrix
and W-bit signed integer mantissas, with ``guard`` bits of headroom (rotations keep
the eigenvalues, which end on the diagonal, bounded by Gershgorin's row sums).
Everything inside the kernel is integer arithmetic on int64: rotation angles from an
integer square root and an integer division, updates by W-bit products followed by
rounding shifts and rounding divisions (round half away from zero), eigenvectors in
Q(W−2). Floats appear only at the edges (scaling in, scaling out).

One rotation zeroes a_pq with t = tan θ = e / (d + sgn(d)·√(d² + e²)), d = a_qq − a_pp,
e = 2·a_pq (the smaller of the two roots, |θ| ≤ π/4), c = 1/√(1+t²), s = t·c, and
updates a_pp −= t·a_pq, a_qq += t·a_pq and rows/columns p, q of A and columns p, q of V.
Sweeps run cyclically by rows until no off-diagonal entry exceeds ``tol_lsb`` units
of the last place, or ``max_sweeps``.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, inline="always")
def _isqrt(x):
    """⌊√x⌋ for 0 ≤ x < 2^62, by the bit-by-bit method (integer only)."""
    if x <= 0:
        return np.int64(0)
    res = np.int64(0)
    bit = np.int64(1) << np.int64(60)
    while bit > x:
        bit >>= 2
    while bit != 0:
        if x >= res + bit:
            x -= res + bit
            res = (res >> 1) + bit
        else:
            res >>= 1
        bit >>= 2
    return res


@numba.njit(cache=True, inline="always")
def _isqrt_round(x):
    """round(√x): ⌊√x⌋ + 1 when x − r² > r (since (r + ½)² = r² + r + ¼)."""
    r = _isqrt(x)
    return r + 1 if x - r * r > r else r


@numba.njit(cache=True, inline="always")
def _div_round(a, b):
    """round(a / b), ties away from zero (b ≠ 0; |2a| must fit int64)."""
    q = (2 * abs(a) + abs(b)) // (2 * abs(b))
    return q if (a >= 0) == (b > 0) else -q


@numba.njit(cache=True, inline="always")
def _mul_shift(a, b, shift):
    """round(a·b / 2^shift), ties away from zero (a·b must fit int64)."""
    prod = a * b
    half = np.int64(1) << (shift - 1)
    if prod >= 0:
        return (prod + half) >> shift
    return -((-prod + half) >> shift)


@numba.njit(cache=True, inline="always")
def _saturate(x, lim):
    return min(max(x, -lim), lim)


@numba.njit(cache=True, inline="always")
def rotation(d, e, F):
    """(c, s, t) in Q(F) of the Jacobi rotation that zeroes the off-diagonal e/2 of a
    2×2 symmetric block whose diagonal difference is d: t = e / (d + sgn(d)·√(d²+e²))
    (|θ| ≤ π/4), c = 1/√(1+t²), s = t·c. Every step rounds to nearest (truncating
    biases add up over the rotations instead of averaging out)."""
    one = np.int64(1) << F
    # √(d² + e²) without overflow: bring both to ≤ 30 bits first
    big = max(abs(d), abs(e))
    sh = 0
    while (big >> sh) >= (np.int64(1) << 30):
        sh += 1
    ds, es = d >> sh, e >> sh
    r = _isqrt_round(ds * ds + es * es)
    den = ds + r if ds >= 0 else ds - r  # |den| ≥ |e|
    t = _div_round(es << F, den) if den != 0 else one
    c = _div_round(one << F, _isqrt_round(one * one + t * t))
    return c, _mul_shift(t, c, F), t


@numba.njit(cache=True, inline="always")
def _identity_q(V, F):
    """V ← the identity in Q(F) (the eigenvector accumulator before any rotation)."""
    one = np.int64(1) << F
    for i in range(V.shape[0]):
        for j in range(V.shape[1]):
            V[i, j] = one if i == j else 0


@numba.njit(cache=True)
def jacobi_fixed(A, W, max_sweeps, tol_lsb, V):
    """In place: A (p×p int64, symmetric, |a| < 2^(W−1)) becomes diagonal; V (p×p
    int64) receives the eigenvectors in Q(W−2). Returns the sweeps run."""
    p = A.shape[0]
    F = W - 2  # fraction bits of c, s, t and V
    lim = (np.int64(1) << (W - 1)) - 1
    _identity_q(V, F)
    sweeps = 0
    for _ in range(max_sweeps):
        off = np.int64(0)
        for i in range(p):
            for j in range(i + 1, p):
                off = max(off, abs(A[i, j]))
        if off <= tol_lsb:
            break
        sweeps += 1
        for ip in range(p - 1):
            for iq in range(ip + 1, p):
                apq = A[ip, iq]
                if abs(apq) <= tol_lsb:
                    continue
                c, s, t = rotation(A[iq, iq] - A[ip, ip], 2 * apq, F)
                tapq = _mul_shift(t, apq, F)
                A[ip, ip] = _saturate(A[ip, ip] - tapq, lim)
                A[iq, iq] = _saturate(A[iq, iq] + tapq, lim)
                A[ip, iq] = 0
                A[iq, ip] = 0
                for k in range(p):
                    if k != ip and k != iq:
                        akp, akq = A[k, ip], A[k, iq]
                        new_p = _saturate(_mul_shift(c, akp, F) - _mul_shift(s, akq, F), lim)
                        new_q = _saturate(_mul_shift(s, akp, F) + _mul_shift(c, akq, F), lim)
                        A[k, ip] = new_p
                        A[ip, k] = new_p
                        A[k, iq] = new_q
                        A[iq, k] = new_q
                for k in range(p):
                    vkp, vkq = V[k, ip], V[k, iq]
                    V[k, ip] = _mul_shift(c, vkp, F) - _mul_shift(s, vkq, F)
                    V[k, iq] = _mul_shift(s, vkp, F) + _mul_shift(c, vkq, F)
    return sweeps


@numba.njit(cache=True, inline="always")
def _shift_round(x, s):
    """round(x · 2^s) for either sign of s (a left shift is exact; |x| < 2^62)."""
    if s >= 0:
        return x << s
    if s <= -63:  # int64 shifts stop at 63 bits; |x| / 2^63 rounds to 0
        return np.int64(0)
    return _mul_shift(x, np.int64(1), -s)


@numba.njit(cache=True, inline="always")
def _bit_length(x):
    """Number of bits of x ≥ 0 (0 for 0)."""
    b = 0
    while (np.int64(1) << b) <= x:
        b += 1
    return b


@numba.njit(cache=True)
def jacobi_bfp(D, O, exps, W, max_sweeps, V):
    """Two-block floating-point Jacobi, in place. The diagonal D (p, int64) and the
    off-diagonal O (p×p int64, symmetric, zero diagonal) are two blocks of W-bit
    mantissas, each with its own exponent (value = mantissa · 2^exps[0] for D,
    · 2^exps[1] for O). Before every sweep each block is renormalised so that its
    bound for the coming sweep fills the W bits: for O the largest row 2-norm (a
    rotation keeps a_kp² + a_kq², so no entry of a row grows past it), for D
    Gershgorin's row bound. As Jacobi converges O shrinks, its exponent drops and its
    entries keep W significant bits instead of decaying to a few units of the last
    place of a single shared scale. A rotation aligns d = a_qq − a_pp to O's exponent
    before the integer rotation, and a_pp, a_qq move by t·a_pq realigned to D's. The
    updates of O and V are multiply–accumulates rounded once (c·a − s·b in 2W bits,
    then one rounding shift). V receives the eigenvectors in Q(W−2). Returns the
    sweeps run; stops when a sweep rotates nothing (every t rounds to 0)."""
    p = D.shape[0]
    F = W - 2
    lim = (np.int64(1) << (W - 1)) - 1
    _identity_q(V, F)
    sweeps = 0
    for _ in range(max_sweeps):
        bound = np.int64(0)
        pre = max(W - 28, 0)  # squares of ≤ 28-bit values: p ≤ 64 of them fit int64
        for i in range(p):
            s2 = np.int64(0)
            for j in range(p):
                o = O[i, j] >> pre
                s2 += o * o
            bound = max(bound, (_isqrt(s2) + 1) << pre)
        if bound <= 1:
            break
        sh = (W - 1) - _bit_length(bound)
        for i in range(p):
            for j in range(p):
                O[i, j] = _shift_round(O[i, j], sh)
        exps[1] -= sh
        bound = np.int64(1)
        for i in range(p):
            r = np.int64(0)
            for j in range(p):
                r += abs(O[i, j])
            bound = max(bound, abs(D[i]) + _shift_round(r, exps[1] - exps[0]) + 1)
        sh = (W - 1) - _bit_length(bound)
        for i in range(p):
            D[i] = _shift_round(D[i], sh)
        exps[0] -= sh
        k = exps[0] - exps[1]  # D's exponent over O's
        kd = min(k, 60 - W)  # d aligned to O's exponent: |d| < 2^(W+kd) ≤ 2^60
        rotated = False
        for ip in range(p - 1):
            for iq in range(ip + 1, p):
                apq = O[ip, iq]
                if apq == 0:
                    continue
                c, s, t = rotation(_shift_round(D[iq] - D[ip], kd),
                                   _shift_round(2 * apq, kd - k), F)
                if s == 0:
                    continue
                rotated = True
                tapq = _shift_round(t * apq, -(F + k))
                D[ip] = _saturate(D[ip] - tapq, lim)
                D[iq] = _saturate(D[iq] + tapq, lim)
                O[ip, iq] = 0
                O[iq, ip] = 0
                for m in range(p):
                    if m != ip and m != iq:
                        amp, amq = O[m, ip], O[m, iq]
                        new_p = _saturate(_shift_round(c * amp - s * amq, -F), lim)
                        new_q = _saturate(_shift_round(s * amp + c * amq, -F), lim)
                        O[m, ip] = new_p
                        O[ip, m] = new_p
                        O[m, iq] = new_q
                        O[iq, m] = new_q
                for m in range(p):
                    vmp, vmq = V[m, ip], V[m, iq]
                    V[m, ip] = _shift_round(c * vmp - s * vmq, -F)
                    V[m, iq] = _shift_round(s * vmp + c * vmq, -F)
        sweeps += 1
        if not rotated:
            break
    return sweeps


@numba.njit(cache=True)
def _block(X, W):
    """W-bit mantissas and the exponent e of one block, X ≈ M · 2^e, peak at full scale
    (M is 0 and e is 0 for an all-zero block). Scaling by 2^−e is exact."""
    peak = 0.0
    for x in X.flat:
        peak = max(peak, abs(x))
    M = np.zeros(X.shape, dtype=np.int64)
    if peak == 0.0:
        return M, 0
    e = math.frexp(peak)[1] - (W - 1)
    lim = (1 << (W - 1)) - 1
    scale = 2.0 ** (-e)
    for i, x in enumerate(X.flat):
        M.flat[i] = min(max(np.int64(np.rint(x * scale)), -lim), lim)
    return M, e


@numba.njit(cache=True)
def eigh_bfp_core(A, W, max_sweeps):
    """:func:`eigh_bfp` without the input checks, callable from compiled code."""
    p = A.shape[0]
    S = (A + A.T) / 2
    d = np.empty(p)
    off = S.copy()
    for i in range(p):
        d[i] = S[i, i]
        off[i, i] = 0.0
    D, ed = _block(d, W)
    O, eo = _block(off, W)
    if ed < eo or not D.any():  # a diagonal below the off-diagonal: put it on O's scale
        for i in range(p):
            D[i] = _shift_round(D[i], ed - eo)
        ed = eo
    exps = np.array([ed, eo], dtype=np.int64)
    V = np.empty((p, p), dtype=np.int64)
    jacobi_bfp(D, O, exps, W, max_sweeps, V)
    evals = D.astype(np.float64) * 2.0 ** exps[0]
    order = np.argsort(evals, kind="mergesort")
    return evals[order], V[:, order].astype(np.float64) / float(1 << (W - 2))


def eigh_bfp(A: np.ndarray, W: int = 24, max_sweeps: int = 20
             ) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors by the two-block floating-point Jacobi
    (:func:`jacobi_bfp`): W-bit mantissas, one exponent for the diagonal and one for
    the off-diagonal, renormalised every sweep. Like ``numpy.linalg.eigh``."""
    return eigh_bfp_core(_check_square(A, W), W, max_sweeps)


def _check_square(A: np.ndarray, W: int) -> np.ndarray:
    if not 12 <= W <= 32:
        raise ValueError(f"word length W must be in 12..32, got {W}")
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {A.shape}")
    if not np.isfinite(A).all():
        raise ValueError("matrix has non-finite entries")
    return A


def to_fixed(A: np.ndarray, W: int, guard: int | None = None) -> tuple[np.ndarray, float]:
    """Block floating point: integer mantissas M (|m| < 2^(W−1)) and the scale with
    A ≈ M · scale, leaving ``guard`` bits of headroom. By default the headroom comes
    from Gershgorin's bound: every eigenvalue (the diagonal at the end) is at most the
    largest absolute row sum, so guard = ⌈log2(row sum / max |a|)⌉ bits suffice (peak
    maps below 2^(W−1−guard), the row sum below 2^(W−1))."""
    peak = float(np.max(np.abs(A)))
    if guard is None and peak > 0 and math.isfinite(peak):
        rows = float(np.max(np.abs(A).sum(axis=1)))
        guard = max(0, math.ceil(math.log2(rows / peak)))
    if peak == 0.0 or not math.isfinite(peak):
        if not math.isfinite(peak):
            raise ValueError("matrix has non-finite entries")
        return np.zeros_like(A, dtype=np.int64), 1.0
    e = math.frexp(peak)[1]  # peak < 2^e
    scale = 2.0 ** (e - (W - 1 - guard))
    M = np.rint(A / scale).astype(np.int64)
    return M, scale


def eigh_fixed(A: np.ndarray, W: int = 24, guard: int | None = None, max_sweeps: int = 12,
               tol_lsb: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors of a symmetric matrix by fixed-point
    Jacobi with word length W (12 ≤ W ≤ 32), like ``numpy.linalg.eigh``."""
    A = _check_square(A, W)
    M, scale = to_fixed((A + A.T) / 2, W, guard)
    V = np.empty_like(M)
    jacobi_fixed(M, W, max_sweeps, tol_lsb, V)
    evals = np.diag(M).astype(np.float64) * scale
    vecs = V.astype(np.float64) / float(1 << (W - 2))
    order = np.argsort(evals, kind="stable")
    return evals[order], vecs[:, order]


# -- metrics -------------------------------------------------------------------------
def principal_angles(U: np.ndarray, V: np.ndarray) -> np.ndarray:
    """Principal angles (radians, ascending) between the column spans of U and V."""
    qu, _ = np.linalg.qr(U)
    qv, _ = np.linalg.qr(V)
    s = np.linalg.svd(qu.T @ qv, compute_uv=False)
    return np.arccos(np.clip(s, -1.0, 1.0))[::-1]


def top_subspace_angle(A: np.ndarray, m: int, W: int, solver=None, **kw) -> float:
    """Largest principal angle between the top-m eigenvector subspaces of A from a
    quantized solver (:func:`eigh_fixed` unless ``solver`` is given) and from LAPACK."""
    _, V = (solver or eigh_fixed)(A, W, **kw)
    _, R = np.linalg.eigh(A)
    return float(principal_angles(V[:, -m:], R[:, -m:]).max())


def accurate_bits(approx: np.ndarray, exact: np.ndarray) -> float:
    """−log2 of the relative max error (how many leading bits agree)."""
    err = np.max(np.abs(approx - exact)) / max(np.max(np.abs(exact)), 1e-300)
    return float(-np.log2(max(err, 2.0**-64)))


SOLVERS = ("bfp", "fixed")


def torch_eigh(W: int = 24, solver: str = "bfp", **kw):
    """A drop-in for ``torch.linalg.eigh`` on small CPU float64 matrices that runs a
    quantized solver (for ``FlagAggregator(eigh=...)``): ``"bfp"`` the two-block
    floating-point Jacobi (:func:`eigh_bfp`), ``"fixed"`` the one-exponent fixed-point
    Jacobi (:func:`eigh_fixed`)."""
    import torch

    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
    solve = eigh_bfp if solver == "bfp" else eigh_fixed

    def eigh(A):
        evals, vecs = solve(A.detach().cpu().numpy(), W, **kw)
        return torch.from_numpy(evals), torch.from_numpy(vecs)

    return eigh
