"""Coordinate-wise order statistics at memory speed (CPU): a sorting network run on a
block of coordinates at once.

The coordinate-wise rules (median, trimmed mean, MeaMed, Phocas, Bulyan's second
phase) need the p values of every coordinate in order. A general sort along the
worker axis costs ≈ 80 memory passes at p = 16; here a block of B coordinates is
copied into a small (p, B) buffer that stays in L1/L2, and a fixed list of
compare-exchanges (Batcher's odd–even merge sort for the next power of two, pruned
to p: 63 comparators at p = 16) is applied row against row: every compare-exchange is
a min and a max over B contiguous lanes, which LLVM turns into SIMD instructions.
The rule's statistic is then read off the sorted block before it leaves the cache,
so each rule reads G once. Blocks are independent and shared among the Numba threads.

Beyond :data:`NETWORK_MAX_P` workers a network has too many comparators; each
coordinate's column is then sorted on its own (``np.sort``).

Conventions, equal to the torch implementations in ``coordinate.py``:

* median: even p takes ``0.5 * (v[p/2 - 1] + v[p/2])`` in the input's dtype;
* the k values closest to a centre c are a contiguous window v[s : s + k] of the
  sorted column; s counts the i < p − k with ``(c − v[i]) > (v[i+k] − c)`` (distances
  in the input's dtype, as ``|G − c|`` is in torch). On equal distances the smaller
  value is kept, a rule that depends on the values only, never on the worker order;
* means (trimmed mean, the window mean) accumulate in float64 and are rounded once
  to the input's dtype.

The kernels check finiteness in the same pass (the exponent bits of every value) and
raise :class:`NonFiniteGradientError` naming the rows, so a rule that uses them needs
no separate pass for it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import numba
import numpy as np
from numba import types
from numba.extending import overload

from innet import i32 as i32_module
from innet.aggregators.base import VALUE_BYTES, Cost, NonFiniteGradientError
from innet.i32 import and_i32, max_i32

#: largest p that uses a sorting network (Batcher at p = 64: 543 comparators)
NETWORK_MAX_P = 64
#: coordinates per block: a (16, 512) float32 block is 32 KiB, inside L1/L2
BLOCK = 512
#: consecutive blocks one thread takes at a time (see :func:`_coordinate_kernel`)
RUN = 16
#: largest p whose network also exists as straight-line code over columns
#: (:func:`unrolled_network`); its compile time grows with the comparators: ≈ 1.4 s
#: at p = 16, 8.6 s at p = 32, 83 s at p = 64
UNROLLED_MAX_P = 32
#: fewest coordinates for which a stack takes the straight-line network: below, the
#: compilation (once per p and machine, then cached) costs more than it saves
UNROLLED_MIN_N = 1 << 16

#: per float dtype: the signed integer type of its bits and the mask of its exponent
#: field (masked words are ≥ 0, so a signed max orders them)
EXPONENT = {np.float32: (np.int32, 0x7F800000), np.float64: (np.int64, 0x7FF0000000000000)}


def _row_peak(word, w, exponent, top):
    """max(top, max over t < w of word[t] & exponent) (compiled: see the overload)."""
    for t in range(w):
        top = max(top, word[t] & exponent)
    return top


@overload(_row_peak, inline="always")
def _row_peak_compiled(word, w, exponent, top):
    if isinstance(word, types.Array) and word.dtype == types.int32:
        def peak_i32(word, w, exponent, top):  # in int32 lanes (innet.i32): Numba
            for t in range(w):  # widens int32 & int32 to int64, at half the lanes
                top = max_i32(and_i32(word[t], exponent), top)
            return top
        return peak_i32

    def peak(word, w, exponent, top):
        for t in range(w):
            e = word[t] & exponent
            top = e if e > top else top
        return top
    return peak

MEDIAN, TRIMMED_MEAN, MEAN_AROUND_MEDIAN, MEAN_AROUND_TRIMMED_MEAN = range(4)


@functools.cache
def batcher_pairs(p: int) -> np.ndarray:
    """Comparators (i, j), i < j, of Batcher's odd–even merge sort for p inputs.

    Built for the next power of two N ≥ p and pruned to p: the missing inputs act as
    +∞, and a comparator (i, j) with j ≥ p leaves input i where it is."""
    N = 1
    while N < p:
        N *= 2
    pairs = []
    step = 1
    while step < N:  # merge sorted runs of length `step` into runs of 2·step
        k = step
        while k >= 1:
            for j in range(k % step, N - k, 2 * k):
                for i in range(min(k, N - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * step) == b // (2 * step) and b < p:
                        pairs.append((a, b))
            k //= 2
        step *= 2
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


def _built_from() -> str:
    """A digest of the code the generated kernels compile in (this module and the
    int32 lanes it inlines). Numba checks a cached function against its own file
    only; the digest in the generated file makes a change here rewrite it, so its
    cache is not reused stale."""
    digest = hashlib.sha256()
    for path in (Path(__file__), Path(i32_module.__file__)):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _unrolled_source(p: int) -> str:
    """Python source of :func:`batcher_pairs` (p) as straight-line code: for each column
    t of a (p, BLOCK) block (flat, row i at i·BLOCK), load its p values, run every
    compare-exchange on them, store them back."""
    lines = ['"""Generated by innet.aggregators.sorting_network: Batcher\'s network for',
             f'p = {p} as straight-line code over the columns of a (p, {BLOCK}) block."""',
             f"# built from {_built_from()}",
             "", "import numba", "",
             "from innet.aggregators.sorting_network import coordinate_body", "", "",
             "@numba.njit(cache=True)",
             "def sort_columns(flat):",
             f"    for t in range({BLOCK}):"]
    lines += [f"        r{i} = flat[{i * BLOCK} + t]" for i in range(p)]
    for a, b in batcher_pairs(p):  # the same selects as _sort_block: equal bit for bit
        lines += [f"        lt = r{a} < r{b}",
                  f"        r{a}, r{b} = (r{a} if lt else r{b}), (r{b} if lt else r{a})"]
    lines += [f"        flat[{i * BLOCK} + t] = r{i}" for i in range(p)]
    lines += ["", "",
              "@numba.njit(cache=True, parallel=True)",
              "def kernel(G, bits, exponent, rows, pairs, rule, b, k, out, bad):",
              "    coordinate_body(G, bits, exponent, rows, pairs, rule, b, k, out, bad,",
              "                    sort_columns, True)"]
    return "\n".join(lines) + "\n"


def _generated_dir() -> Path:
    """Where the generated networks are written: beside this package's bytecode, or
    in the temporary directory where that is read-only. (Numba caches a compiled
    function beside its source file, so the source must be a file that stays.)"""
    for base in (Path(__file__).parent / "__pycache__", Path(tempfile.gettempdir())):
        directory = base / "innet_networks"
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if os.access(directory, os.W_OK):
                return directory
        except OSError:
            continue
    raise OSError("no writable directory for the generated sorting networks")


@functools.cache
def unrolled_network(p: int):
    """A module with ``sort_columns``, Batcher's network for p (2 ≤ p ≤
    :data:`UNROLLED_MAX_P`) compiled as straight-line code over the columns of a block:
    each column's p values stay in vector registers from the first compare-exchange
    to the last, where :func:`_sort_block` loads and stores two rows of the block per
    compare-exchange (at p = 16, 63 of them). LLVM vectorises the column loop once no
    two rows can overlap, which a constant row stride shows it. Equal to
    :func:`_sort_block` bit for bit (the same selects in the same order); about 2×
    faster on a block in cache at p = 16 to 24.

    The source is generated, written once to a file (rewritten only if it changed, so
    Numba's cache of it stays valid) and imported from there, with ``kernel``, the
    coordinate kernel that sorts with it (:func:`coordinate_body`)."""
    if not 2 <= p <= UNROLLED_MAX_P:
        raise ValueError(f"unrolled networks exist for 2 <= p <= {UNROLLED_MAX_P}, got {p}")
    source = _unrolled_source(p)
    path = _generated_dir() / f"batcher_p{p}.py"
    if not path.exists() or path.read_text() != source:
        partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        partial.write_text(source)
        os.replace(partial, path)  # whole or absent, whoever writes it concurrently
    name = f"innet_generated_batcher_p{p}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@numba.njit(cache=True)
def _no_sorter(flat):
    """Stands for the straight-line sorter where a stack takes the rows' network."""


def sort_cost(p: int, n: int) -> Cost:
    """Modelled cost of sorting every column of a (p, n) stack in one pass: the
    compare-exchanges of :func:`batcher_pairs` (a min and a max each), or p·log₂p
    comparisons per column beyond :data:`NETWORK_MAX_P`."""
    if p <= NETWORK_MAX_P:
        ops = 2.0 * len(batcher_pairs(p))
    else:
        ops = p * np.log2(p)
    return Cost(p * n * VALUE_BYTES, ops * n, 1)


@numba.njit(cache=True, inline="always")
def _sort_block(buf, w, pairs, p):
    """Sort each of the first w columns of buf (p, B) along the worker axis."""
    if pairs.shape[0] > 0 or p == 1:
        for c in range(pairs.shape[0]):
            lo = buf[pairs[c, 0]]
            hi = buf[pairs[c, 1]]
            for t in range(w):
                a = lo[t]
                b = hi[t]
                lo[t] = a if a < b else b
                hi[t] = b if a < b else a
    else:  # p beyond the network: one column at a time
        col = np.empty(p, buf.dtype)
        for t in range(w):
            for r in range(p):
                col[r] = buf[r, t]
            col.sort()
            for r in range(p):
                buf[r, t] = col[r]


@numba.njit(cache=True, inline="always")
def _window_mean(buf, w, centre, k, out):
    """out[t] = mean of the k sorted values of column t closest to centre[t]."""
    p = buf.shape[0]
    s = np.zeros(w, np.int64)
    for i in range(p - k):
        below = buf[i]
        above = buf[i + k]
        for t in range(w):
            c = centre[t]
            s[t] += (c - below[t]) > (above[t] - c)
    acc = np.zeros(w, np.float64)
    for r in range(p):
        row = buf[r]
        for t in range(w):
            inside = r >= s[t] and r < s[t] + k
            acc[t] += np.float64(row[t]) if inside else 0.0
    for t in range(w):
        out[t] = acc[t] / k


@numba.njit(cache=True, inline="always")
def coordinate_body(G, bits, exponent, rows, pairs, rule, b, k, out, bad, sorter, unrolled):
    """out[j] = the rule's statistic of the values G[rows, j] (see the module doc); the
    body of the coordinate kernels, inlined into each (the rows' network:
    :func:`_coordinate_kernel`; a straight-line network: the one
    :func:`unrolled_network` generates beside its sorter, which passes it as a global, so
    Numba's cache key, the kernel's code and argument types, holds no function object).

    The blocks go out in runs of :data:`RUN` consecutive blocks, so each row is read
    as one stream of RUN·BLOCK values (blocks dealt out one by one to alternate
    threads cut every row's stream every BLOCK values, and the copy into the block
    buffer waited on memory: 56 % of the median's time, the median at p = 16,
    n = 2²⁰ 7.7 ms against a 2.7 ms float sum).

    ``bits`` is G viewed as signed integers and ``exponent`` the mask of the float
    exponent field: a value is NaN or ±Inf exactly when its exponent bits are all
    set, so bad[u, r] (the largest masked word run u saw in row r) equals the mask
    exactly for the rows that are not finite. An integer max vectorises; a float
    test in the copy loop would not.

    With ``unrolled``, ``sorter`` (:func:`unrolled_network` (p)) sorts the block, every
    column of it, those past a short last block's w included (whatever they hold:
    nothing reads them)."""
    p = rows.shape[0]
    n = G.shape[1]
    n_blocks = (n + BLOCK - 1) // BLOCK
    lo, hi = (p - 1) // 2, p // 2
    for u in numba.prange(bad.shape[0]):
        tid = np.int64(u)
        buf = np.empty((p, BLOCK), G.dtype)
        centre = np.empty(BLOCK, G.dtype)
        acc = np.empty(BLOCK, np.float64)
        for blk in range(tid * RUN, min(tid * RUN + RUN, n_blocks)):
            start = blk * BLOCK
            w = min(BLOCK, n - start)
            # slices, not start + t offsets: a possibly negative index keeps Numba's
            # wrap-around test in the loop, and that stops LLVM vectorising it
            result = out[start : start + w]
            for r in range(p):
                src = G[rows[r], start : start + w]
                word = bits[rows[r], start : start + w]
                dst = buf[r]
                for t in range(w):
                    dst[t] = src[t]
                bad[tid, r] = _row_peak(word, w, exponent, bad[tid, r])
            if unrolled:
                sorter(buf.reshape(-1))
            else:
                _sort_block(buf, w, pairs, p)
            if rule == MEDIAN or rule == MEAN_AROUND_MEDIAN:
                if lo == hi:
                    for t in range(w):
                        centre[t] = buf[lo, t]
                else:
                    for t in range(w):
                        centre[t] = (buf[lo, t] + buf[hi, t]) * 0.5
            else:  # trimmed mean of the middle p − 2b values
                for t in range(w):
                    acc[t] = 0.0
                for r in range(b, p - b):
                    row = buf[r]
                    for t in range(w):
                        acc[t] += row[t]
                for t in range(w):
                    centre[t] = acc[t] / (p - 2 * b)
            if rule == MEDIAN or rule == TRIMMED_MEAN:
                for t in range(w):
                    result[t] = centre[t]
            else:
                _window_mean(buf, w, centre, k, result)


@numba.njit(cache=True, parallel=True)
def _coordinate_kernel(G, bits, exponent, rows, pairs, rule, b, k, out, bad):
    """:func:`coordinate_body` with the rows' network (:func:`_sort_block`)."""
    coordinate_body(G, bits, exponent, rows, pairs, rule, b, k, out, bad,
                    _no_sorter, False)


def _run(G: np.ndarray, rule: int, b: int = 0, k: int = 0,
         rows: np.ndarray | None = None) -> np.ndarray:
    if G.ndim != 2 or G.dtype not in (np.float32, np.float64):
        raise ValueError(f"expected a (p, n) float32/float64 array, got {G.dtype} {G.shape}")
    G = np.ascontiguousarray(G)
    rows = np.arange(G.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    p = rows.shape[0]
    pairs = batcher_pairs(p) if p <= NETWORK_MAX_P else np.zeros((0, 2), np.int64)
    unrolled = 2 <= p <= UNROLLED_MAX_P and G.shape[1] >= UNROLLED_MIN_N
    kernel = unrolled_network(p).kernel if unrolled else _coordinate_kernel
    out = np.empty(G.shape[1], G.dtype)
    itype, mask = EXPONENT[G.dtype.type]
    runs = max(1, -(-G.shape[1] // (BLOCK * RUN)))
    bad = np.zeros((runs, p), itype)
    # runs handed out one at a time: a core the (shared) host slows down takes fewer
    before = numba.set_parallel_chunksize(1)
    try:
        kernel(G, G.view(itype), itype(mask), rows, pairs, rule, b, k, out, bad)
    finally:
        numba.set_parallel_chunksize(before)
    nonfinite = np.flatnonzero((bad == mask).any(axis=0))
    if nonfinite.size:
        raise NonFiniteGradientError(rows[nonfinite].tolist())
    return out


def median(G: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
    """Per-coordinate median of G[rows] (even count: mean of the two middle values)."""
    return _run(G, MEDIAN, rows=rows)


def trimmed_mean(G: np.ndarray, b: int) -> np.ndarray:
    """Per coordinate, the mean of the values left after dropping the b largest and
    the b smallest."""
    if not 0 <= 2 * b < G.shape[0]:
        raise ValueError(f"trimmed mean needs 0 <= 2b < p, got b={b}, p={G.shape[0]}")
    return _run(G, TRIMMED_MEAN, b=b)


def mean_around_median(G: np.ndarray, k: int, rows: np.ndarray | None = None) -> np.ndarray:
    """Per coordinate, the mean of the k values of G[rows] closest to their median."""
    p = G.shape[0] if rows is None else len(rows)
    if not 1 <= k <= p:
        raise ValueError(f"needs 1 <= k <= p, got k={k}, p={p}")
    return _run(G, MEAN_AROUND_MEDIAN, k=k, rows=rows)


def mean_around_trimmed_mean(G: np.ndarray, b: int, k: int) -> np.ndarray:
    """Per coordinate, the mean of the k values closest to the b-trimmed mean."""
    p = G.shape[0]
    if not 0 <= 2 * b < p or not 1 <= k <= p:
        raise ValueError(f"needs 0 <= 2b < p and 1 <= k <= p, got b={b}, k={k}, p={p}")
    return _run(G, MEAN_AROUND_TRIMMED_MEAN, b=b, k=k)
