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

import numpy as np

CACHE_LINE = 64  # bytes, x86-64 and most ARM cores


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
