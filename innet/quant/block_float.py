"""Block floating point for in-network summation (SwitchML, REFERENCE §4.1).

A vector is cut into chunks of k values; chunk c shares one exponent e_c with
2^e_c ≥ max over workers of |x| in the chunk, and is sent as q = round(x·f_c) with
f_c = INT32_MAX / (p·2^e_c), so the sum of p honest contributions fits int32.
The kernels are Numba-compiled, parallel over chunks, one pass over the data.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from innet.i32 import and_i32, max_i32

INT32_MAX = 2**31 - 1
EXP_MIN, EXP_MAX = -126, 127  # the int8 header field, float32's normal range


@numba.njit(cache=True, inline="always")
def chunk_exponent(row, start, k):
    """The exponent of the chunk of k values from ``start`` of one float32 row viewed
    as int32: |x| orders like its bits with the sign cleared, so the peak is an
    integer max (vectorises; NaN/Inf give the top exponent) and its exponent is read
    from the bits: frexp(x)[1] = biased exponent − 126. A chunk past the end of the
    row gets EXP_MIN. (The one definition: the bulk pass below and the compiled
    workers of :func:`emulator.rounds.window_kernel` both call it.)"""
    n = row.shape[0]
    if start >= n:
        return EXP_MIN
    seg = row[start:min(start + k, n)]
    peak = np.int32(0)  # in int32 lanes (innet.i32): twice as many per vector as int64
    for j in range(seg.shape[0]):
        peak = max_i32(and_i32(seg[j], np.int32(0x7FFFFFFF)), peak)
    e = (peak >> 23) - 126  # zero and subnormal peaks land at or below EXP_MIN
    return min(max(e, EXP_MIN), EXP_MAX)


@numba.njit(cache=True, parallel=True)
def _chunk_exponents(bits, k, first_chunk, out):
    """bits: the float32 rows viewed as int32; out[w, c] for chunk first_chunk + c."""
    p = bits.shape[0]
    C = out.shape[1]
    for w in numba.prange(p):
        row = bits[w]
        for c in range(C):
            out[w, c] = chunk_exponent(row, (first_chunk + c) * k, k)


def chunk_exponents(X: np.ndarray, k: int, first_chunk: int = 0,
                    count: int | None = None) -> np.ndarray:
    """(p, count) exponents: per worker and chunk of k values (chunks first_chunk …
    first_chunk + count − 1; default all), the smallest e with 2^e ≥ max|x|, clipped
    to [-126, 127] (zero chunks, and chunks past the end of X, get -126)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    if count is None:
        count = -(-X.shape[1] // k) - first_chunk
    out = np.empty((X.shape[0], count), dtype=np.int32)
    _chunk_exponents(X.view(np.int32), k, first_chunk, out)
    return out


def scale_of(e: np.ndarray, p: int) -> np.ndarray:
    """f = INT32_MAX / (p·2^e), float64 (2^e exact: e is an integer)."""
    return INT32_MAX / (p * np.ldexp(1.0, np.asarray(e, dtype=np.int32)))


@numba.njit(cache=True, inline="always")
def scale_value(e, p):
    """:func:`scale_of` of one exponent, for compiled callers (the same float64
    operations, so the same bits)."""
    return INT32_MAX / (p * math.ldexp(1.0, e))


@numba.njit(cache=True, inline="always")
def quantize_value(x, f):
    """round(x·f) (half to even) clipped to int32 (the worker's per-value quantiser)."""
    q = np.rint(x * f)
    q = min(max(q, -2147483648.0), 2147483647.0)
    return np.int32(q)


@numba.njit(cache=True, parallel=True)
def _quantize(X, first_chunk, f, k, out):
    p, n = X.shape
    m = out.shape[1]
    for w in numba.prange(p):
        row = X[w]
        for c in range(m):
            base = (first_chunk + c) * k
            fc = f[c]
            dst = out[w, c]
            if base + k <= n:  # whole chunk: a branch-free loop that vectorises
                src = row[base:base + k]
                for j in range(k):
                    dst[j] = quantize_value(src[j], fc)
            else:
                for j in range(k):
                    dst[j] = quantize_value(row[base + j], fc) if base + j < n else 0


def quantize_chunks(X: np.ndarray, first_chunk: int, f: np.ndarray, k: int,
                    out: np.ndarray | None = None) -> np.ndarray:
    """Chunks first_chunk … first_chunk+len(f)−1 of every row of X as (p, m, k) int32:
    round(x·f_c), clipped to int32, zero past the end of X. ``out``: a reused buffer."""
    shape = (X.shape[0], len(f), k)
    if out is None:
        out = np.empty(shape, dtype=np.int32)
    elif out.shape != shape or out.dtype != np.int32 or not out.flags.c_contiguous:
        raise ValueError(f"out must be a contiguous int32 array of shape {shape}")
    _quantize(np.ascontiguousarray(X, dtype=np.float32), first_chunk,
              np.ascontiguousarray(f, dtype=np.float64), k, out)
    return out
