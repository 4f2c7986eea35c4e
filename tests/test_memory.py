"""Cache-line placement of the emulator's hot buffers (innet.memory)."""

import numba
import numpy as np
import pytest

from emulator.switch import SumSwitch, allocate_registers
from host.switch_allreduce import SwitchAllreduce
from innet.memory import CACHE_LINE, aligned_zeros, copy_row, lane_rows, nonneg, prefetch_span


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.float64, np.uint64])
@pytest.mark.parametrize("shape", [1, 7, (3, 5), (2, 64), (0,), (4, 0)])
def test_aligned_zeros_is_zeroed_contiguous_and_on_a_line(shape, dtype):
    # many allocations in a row: numpy's own would land anywhere 16 bytes apart
    for _ in range(20):
        a = aligned_zeros(shape, dtype)
        assert a.size == 0 or a.ctypes.data % CACHE_LINE == 0  # (empty: no address)
        assert a.flags.c_contiguous and a.flags.writeable
        assert a.dtype == np.dtype(dtype)
        assert a.shape == ((shape,) if np.isscalar(shape) else tuple(shape))
        assert not a.any()


@pytest.mark.parametrize("k", [1, 15, 16, 17, 37, 62, 64, 100])
def test_each_lanes_packet_buffer_has_lines_of_its_own(k):
    rows = lane_rows(4, k)
    assert rows.shape[1] >= k and (rows.shape[1] * 4) % CACHE_LINE == 0
    for q in range(4):
        assert rows[q].ctypes.data % CACHE_LINE == 0
    # writing one lane's first k values touches no line of another lane
    rows[1, :k] = 7
    lines = {(rows[q].ctypes.data + 4 * j) // CACHE_LINE for q in (0, 2, 3) for j in range(k)}
    mine = {(rows[1].ctypes.data + 4 * j) // CACHE_LINE for j in range(k)}
    assert not lines & mine
    assert rows[0].sum() == rows[2].sum() == rows[3].sum() == 0


def test_registers_and_engine_buffers_start_on_cache_lines():
    for reg in allocate_registers(100, 64):
        assert reg.ctypes.data % CACHE_LINE == 0
    sw = SumSwitch(4, 64, 16)
    assert sw.values.ctypes.data % CACHE_LINE == 0
    ar = SwitchAllreduce(4, 64, 16)
    X = np.random.default_rng(0).normal(size=(4, 64 * 40)).astype(np.float32)
    out, _ = ar.allreduce(X)
    np.testing.assert_allclose(out, X.sum(0, dtype=np.float64), rtol=0, atol=1e-5)
    assert ar._scratch.ctypes.data % CACHE_LINE == 0
    # an engine restored from a checkpoint gets its buffers back on a line
    import pickle

    again = pickle.loads(pickle.dumps(ar))
    out2, _ = again.allreduce(X)
    np.testing.assert_array_equal(out, out2)
    assert again._scratch.ctypes.data % CACHE_LINE == 0


@numba.njit(cache=True)
def _prefetch_everywhere(a):
    for r in range(a.shape[0]):
        for start in range(-3, a.shape[1] + 3):
            prefetch_span(a, r, start, 5)


@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.float64])
def test_prefetch_is_a_hint_that_changes_nothing(dtype):
    """prefetch_span compiles for the kernels' row types, accepts spans that run off
    either end of a row (it asks for nothing there) and leaves the data as it was."""
    a = np.arange(6 * 37, dtype=dtype).reshape(6, 37)
    before = a.copy()
    _prefetch_everywhere(a)
    assert np.array_equal(a, before)


@numba.njit(cache=True)
def _gather_checked(a, idx):
    out = np.empty(idx.shape[0], a.dtype)
    for j in range(idx.shape[0]):
        i = idx[j]
        out[j] = a[nonneg(i)] if i >= 0 else -1
    return out


def test_nonneg_is_the_identity_on_checked_indices():
    """nonneg only tells the compiler what the code checked: indexing through it reads
    what plain indexing reads (int32 and int64 indices, up to the last element), and an
    unsigned integer is refused at typing (there is nothing to promise)."""
    a = np.arange(1000, dtype=np.int64) * 3
    for dtype in (np.int32, np.int64):
        idx = np.array([0, 1, 999, -5, 500, 0, -1], dtype)
        np.testing.assert_array_equal(_gather_checked(a, idx),
                                      np.where(idx >= 0, a[np.maximum(idx, 0)], -1))
    with pytest.raises(numba.TypingError):
        numba.njit(lambda x: nonneg(x))(np.uint64(3))


@numba.njit(cache=True)
def _copy_rows(dst, di, src, si, count):
    for t in range(di.shape[0]):
        copy_row(dst, di[t], src, si[t], count)


def _copy_rows_of_width(K):
    @numba.njit
    def copy(dst, di, src, si):
        for t in range(di.shape[0]):
            copy_row(dst, di[t], src, si[t], K)  # K a constant of the compilation
    return copy


@pytest.mark.parametrize("dtype", [np.int32, np.int8, np.float64, np.uint64])
@pytest.mark.parametrize("count", [0, 1, 13, 64])
def test_copy_row_writes_exactly_the_rows_prefix(dtype, count):
    """copy_row is dst[i, :count] = src[j, :count]: nothing before, after or beside it
    changes, whether count is a run-time value or a constant of the compilation, for
    rows longer than count and rows of other lengths in the two arrays."""
    rng = np.random.default_rng(count)
    src = rng.integers(0, 100, size=(9, 70)).astype(dtype)
    dst = rng.integers(100, 200, size=(5, 80)).astype(dtype)
    di, si = np.array([4, 0, 2, 0]), np.array([8, 3, 0, 5])
    want = dst.copy()
    for d, s in zip(di, si):
        want[d, :count] = src[s, :count]
    for copy in (lambda *a: _copy_rows(*a, count), _copy_rows_of_width(count)):
        got = dst.copy()
        copy(got, di, src, si)
        np.testing.assert_array_equal(got, want)


def test_copy_row_refuses_what_it_cannot_copy_as_one_block():
    """Two arrays of different dtypes, a strided (non-C) array or a read-only
    destination are refused at typing, not copied wrongly."""
    a = np.zeros((3, 8), np.int32)
    one = np.array([0])
    with pytest.raises(numba.TypingError):
        _copy_rows(a, one, np.zeros((3, 8), np.int64), one, 4)
    with pytest.raises(numba.TypingError):
        _copy_rows(a, one, np.zeros((3, 16), np.int32)[:, ::2], one, 4)
    ro = np.zeros((3, 8), np.int32)
    ro.flags.writeable = False
    with pytest.raises(numba.TypingError):
        _copy_rows(ro, one, a, one, 4)
