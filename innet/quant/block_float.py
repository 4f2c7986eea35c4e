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

INT32_MAX = 2**31 - 1
EXP_MIN, EXP_MAX = -126, 127  # the int8 header field, float32's normal range


@numba.njit(cache=True, parallel=True)
def _chunk_exponents(X, k, out):
    p, n = X.shape
    C = out.shape[1]
    for c in numba.prange(C):
        lo = c * k
        hi = min(lo + k, n)
        for w in range(p):
            peak = 0.0
            for j in range(lo, hi):
                a = abs(X[w, j])
                peak = a if a > peak else peak
            if peak > 0.0:
                e = math.frexp(peak)[1]  # peak = m·2^e, m in [0.5, 1): 2^e ≥ peak
                out[w, c] = min(max(e, EXP_MIN), EXP_MAX)
            else:
                out[w, c] = EXP_MIN


def chunk_exponents(X: np.ndarray, k: int) -> np.ndarray:
    """(p, C) exponents: per worker and chunk of k values, the smallest e with
    2^e ≥ max|x|, clipped to [-126, 127] (zero chunks get -126)."""
    X = np.ascontiguousarray(X, dtype=np.float32)
    out = np.empty((X.shape[0], -(-X.shape[1] // k)), dtype=np.int32)
    _chunk_exponents(X, k, out)
    return out


def scale_of(e: np.ndarray, p: int) -> np.ndarray:
    """f = INT32_MAX / (p·2^e), float64."""
    return INT32_MAX / (p * np.exp2(np.asarray(e, dtype=np.float64)))


@numba.njit(cache=True, parallel=True)
def _quantize(X, first_chunk, f, k, out):
    p, n = X.shape
    m = out.shape[1]
    for c in numba.prange(m):
        base = (first_chunk + c) * k
        for w in range(p):
            for j in range(k):
                col = base + j
                if col < n:
                    q = round(X[w, col] * f[c])
                    q = min(max(q, -2147483648.0), 2147483647.0)
                    out[w, c, j] = np.int32(q)
                else:
                    out[w, c, j] = 0


def quantize_chunks(X: np.ndarray, first_chunk: int, f: np.ndarray, k: int) -> np.ndarray:
    """Chunks first_chunk … first_chunk+len(f)−1 of every row of X as (p, m, k) int32:
    round(x·f_c), clipped to int32, zero past the end of X."""
    out = np.empty((X.shape[0], len(f), k), dtype=np.int32)
    _quantize(np.ascontiguousarray(X, dtype=np.float32), first_chunk,
              np.ascontiguousarray(f, dtype=np.float64), k, out)
    return out
