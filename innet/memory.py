"""Cache-line-aligned arrays for the emulator's packet rows and registers.

numpy hands out a large array 16 bytes into its first page, so a row of 64 int32 (one
packet, one slot's value register) spans five cache lines instead of four and every
other 32-byte vector access splits across two. Where two threads write neighbouring
rows (the slot lanes' packet buffers) the shared line ping-pongs between the cores.
On this project's benchmark machine a lane's packet buffer off the line boundary made
the whole allreduce 20–25 % slower (37–39 ms against 30.5 ms, the same process, only
the buffer moved), and where it landed depended on the heap, so one process in three
ran slow; the switch pipeline with its registers on a line boundary is ≈ 10 % faster.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

CACHE_LINE = 64  # bytes, x86-64 and most ARM cores


@intrinsic
def nonneg(typingctx, x):
    """``x`` (a signed integer already checked to be ≥ 0), with that fact told to LLVM
    (``llvm.assume``). Numba indexes with signed integers and wraps a negative index
    around the array's length; a kernel whose indices come from packet fields cannot
    be seen to be non-negative, so every access kept a select and the array's length
    (reloaded from the stack in a loop short of registers). Only for values the code
    has checked: an assumption that is false is undefined behaviour."""
    if not isinstance(x, types.Integer) or not x.signed:
        return None

    def codegen(context, builder, signature, args):
        (value,) = args
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [ir.IntType(1)]), "llvm.assume")
        builder.call(fn, [builder.icmp_signed(">=", value, ir.Constant(value.type, 0))])
        return value

    return x(x), codegen


def _row_byte(context, builder, array_type, array, row_type, row):
    """(codegen) An i8* to the first byte of row ``row`` of a 2-D array."""
    ary = context.make_array(array_type)(context, builder, array)
    stride = cgutils.unpack_tuple(builder, ary.strides)[0]
    row = context.cast(builder, row, row_type, types.intp)
    return builder.gep(builder.bitcast(ary.data, ir.IntType(8).as_pointer()),
                       [builder.mul(row, stride)])


@intrinsic
def copy_row(typingctx, dst, i, src, j, count):
    """dst[i, :count] = src[j, :count] as one ``llvm.memcpy``: two different
    C-contiguous 2-D arrays of one dtype, count ≤ both rows' length (unchecked, like
    the kernels' other indexing). Where count is a constant of the compilation (a
    kernel compiled per packet width) LLVM expands the copy into a few full-width
    vector moves; the element loop it replaces compiled to one scalar load and store
    per element (LLVM cannot tell the two rows apart, so it neither vectorises nor
    reorders them)."""
    if not (isinstance(dst, types.Array) and isinstance(src, types.Array)
            and dst.ndim == 2 and src.ndim == 2 and dst.layout == "C" and src.layout == "C"
            and dst.dtype == src.dtype and dst.mutable
            and all(isinstance(t, types.Integer) for t in (i, j, count))):
        return None

    def codegen(context, builder, signature, args):
        d, di, s, sj, n = args
        tys = signature.args
        n = context.cast(builder, n, tys[4], types.intp)
        size = context.get_abi_sizeof(context.get_data_type(tys[0].dtype))
        cgutils.raw_memcpy(builder, _row_byte(context, builder, tys[0], d, tys[1], di),
                           _row_byte(context, builder, tys[2], s, tys[3], sj), n, size)
        return context.get_dummy_value()

    return types.none(dst, i, src, j, count), codegen


def aligned_zeros(shape, dtype, align: int = CACHE_LINE) -> np.ndarray:
    """A zeroed C-contiguous array whose first element sits on an ``align``-byte
    boundary (a view into a slightly larger buffer, which it keeps alive)."""
    dtype = np.dtype(dtype)
    shape = (shape,) if np.isscalar(shape) else tuple(shape)
    count = int(np.prod(shape, dtype=np.int64))
    raw = np.zeros(count * dtype.itemsize + align, np.uint8)
    skip = (-raw.ctypes.data) % align
    return raw[skip:skip + count * dtype.itemsize].view(dtype).reshape(shape)


def lane_rows(lanes: int, k: int, dtype=np.int32) -> np.ndarray:
    """(lanes, k') buffers, one row per thread, each row on its own cache lines
    (k' ≥ k rounds a row up to whole lines, so no two threads write one line)."""
    per_line = CACHE_LINE // np.dtype(dtype).itemsize
    return aligned_zeros((lanes, -(-k // per_line) * per_line), dtype)


@intrinsic
def _prefetch_line(typingctx, a, row, byte):
    """Hint the cache line at byte ``byte`` of row ``row`` of a 2-D array into the
    caches (x86 ``prefetcht0``; a hint never faults, wherever it points)."""
    if not (isinstance(a, types.Array) and a.ndim == 2 and isinstance(row, types.Integer)
            and isinstance(byte, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        arr, r, b = args
        tys = signature.args
        b = context.cast(builder, b, tys[2], types.intp)
        at = builder.gep(_row_byte(context, builder, tys[0], arr, tys[1], r), [b])
        i8p = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]),
            "llvm.prefetch.p0i8")
        # read, keep in all levels, data cache
        builder.call(fn, [at, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
        return context.get_dummy_value()

    return types.none(a, row, byte), codegen


@numba.njit(cache=True, inline="always")
def prefetch_span(a, row, start, count):
    """Ask for a[row, start : start + count] ahead of its use (nothing past the row's
    end). A kernel that reads several streams a packet at a time, with work between
    the reads, keeps too few misses in flight for the hardware prefetcher to hide the
    memory's latency; asking a few packets ahead does (see emulator.rounds)."""
    if start >= 0 and start + count <= a.shape[1]:
        base = start * a.itemsize
        for b in range(base, base + count * a.itemsize, CACHE_LINE):
            _prefetch_line(a, row, b)
