"""Quantisation kernels against slow references."""

import math

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from innet.quant import EXP_MAX, EXP_MIN, chunk_exponents, quantize_chunks, scale_of


def exponents_reference(X, k):
    p, n = X.shape
    out = np.empty((p, -(-n // k)), int)
    for w in range(p):
        for c in range(out.shape[1]):
            peak = max((abs(float(x)) for x in X[w, c * k:(c + 1) * k]), default=0.0)
            e = math.frexp(peak)[1] if peak > 0 and math.isfinite(peak) else (
                EXP_MAX if peak > 0 else EXP_MIN)
            out[w, c] = min(max(e, EXP_MIN), EXP_MAX)
    return out


floats32 = st.floats(width=32, allow_nan=False) | st.sampled_from(
    [0.0, -0.0, 1e-45, -1.4e-40, 1.0, 0.5, 2.0**-126, 3.4e38, float("inf")])


@given(X=arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 40)), elements=floats32),
       k=st.integers(1, 9))
def test_chunk_exponents_match_frexp(X, k):
    assert np.array_equal(chunk_exponents(X, k), exponents_reference(X, k))


@given(seed=st.integers(0, 2**31), p=st.integers(1, 16), k=st.integers(1, 16))
def test_quantised_chunks_fit_the_switchml_bound(seed, p, k):
    rng = np.random.default_rng(seed)
    X = (rng.normal(size=(p, 5 * k + 3)) * 10.0 ** rng.uniform(-8, 8)).astype(np.float32)
    e = chunk_exponents(X, k).max(axis=0)
    f = scale_of(e, p)
    Q = quantize_chunks(X, 0, f, k)
    assert (np.abs(Q.astype(np.int64)) <= 2**31 // p + 1).all()
    # reference: round half to even of x·f, zero past the end
    ref = np.zeros_like(Q)
    for c in range(len(f)):
        cols = np.arange(c * k, min((c + 1) * k, X.shape[1]))
        ref[:, c, :len(cols)] = np.rint(X[:, cols].astype(np.float64) * f[c])
    assert np.array_equal(Q, ref)
