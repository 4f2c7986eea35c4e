"""The switch: executes the streaming-sum program on batches of packets.

Registers are fixed-width numpy arrays owned by :class:`SumSwitch`; the per-packet
work (validation, bitmap, counter, exponent max, saturating adds, the decision table)
runs in one Numba-compiled loop over the batch, so no Python runs per packet. Every
dropped packet is counted with its reason; nothing a packet carries can raise.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numba
import numpy as np

from innet.memory import aligned_zeros, copy_row, nonneg
from innet.protocol import decode, flag, packet_dtype
from p4_models import Program, Target, streaming_sum, tofino1
from p4_models import switchml_sum as ss

DROP_REASONS = ("malformed", "unknown_job", "worker_out_of_range", "wrong_ingress_port",
                "slot_out_of_range", "duplicate", "stale")
MALFORMED, UNKNOWN_JOB, WORKER_RANGE, WRONG_PORT, SLOT_RANGE, DUPLICATE, STALE = range(7)
MULTICAST, UNICAST = 1, 2
F_RESULT, F_OVERFLOW, F_PHASE = flag("RESULT"), flag("OVERFLOW"), flag("PHASE")
INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)


@numba.njit(cache=True, inline="always")
def use_key(step, packet_id):
    """The use of a slot a packet belongs to: its step and packet_id header fields
    (u32 each) as one 64-bit key. Successive uses of one
    shadow set of a slot have increasing keys: chunks go out in order within a step,
    and steps follow each other."""
    return ((np.int64(step) & 0xFFFFFFFF) << 32) | (np.int64(packet_id) & 0xFFFFFFFF)


@numba.njit(cache=True, inline="always")
def switch_packet(job_id, p, pool_size, k, port_of_worker, table, exp_cap,
                  job, w, v, s, flags, exponent, count, use, ingress, source, r,
                  bitmap, use_reg, counter, exp_reg, ovf_reg, regs, drops, lane):
    """One packet through the streaming-sum program: the parser's and access checks,
    then the program's stages (:mod:`p4_models.switchml_sum`) and its decision table.
    Its k values are source[r] (r ≥ 0), ``use`` its :func:`use_key`; ``exp_cap`` the job's
    exponent cap and ``port_of_worker`` its ingress table (control-plane state).
    Returns (kind, register index): kind 0 = nothing sent, MULTICAST = the completed
    slot goes to every worker, UNICAST = the kept result goes back to worker w,
    -1 = dropped (counted in drops[lane] by reason). Shared by the batch pipeline below and
    the compiled allreduce rounds in host.switch_allreduce."""
    # parser and access checks: count every drop, never raise. The exponent preamble
    # (PHASE flag) is header-only: count 0, its values are not read
    header_only = count == 0 and (flags & F_PHASE) != 0
    if ((count != k and not header_only) or (flags & F_RESULT) != 0 or exponent < -128
            or exponent > 127):
        drops[lane, MALFORMED] += 1  # (the exponent register is the header's 8 bits)
        return -1, 0
    if job != job_id:
        drops[lane, UNKNOWN_JOB] += 1
        return -1, 0
    if w < 0 or w >= p:
        drops[lane, WORKER_RANGE] += 1
        return -1, 0
    if ingress != port_of_worker[w]:
        drops[lane, WRONG_PORT] += 1
        return -1, 0
    if s < 0 or s >= pool_size or v < 0 or v > 1:
        drops[lane, SLOT_RANGE] += 1
        return -1, 0
    # checked above: say so, and indexing drops its wrap-around of negative indices
    # (with the payload row r and the lane loop's answer row: A/B on the benchmark's
    # batches, 11.8-11.9 -> 11.2-11.5 ms)
    s, v, w, r = nonneg(s), nonneg(v), nonneg(w), nonneg(r)
    idx = nonneg(v * pool_size + s)
    # the program's stages, in pipeline order (p4_models.switchml_sum)
    stale, newer = ss.use_check(use_reg, s, v, use)
    if stale:
        drops[lane, STALE] += 1
        return -1, 0
    seen = ss.set_mine_clear_other(bitmap, use_reg, s, v, w, use, newer)
    c, seen, in_progress, last = ss.count(counter, idx, newer, p, seen)
    # the const-entries decision table, its key (seen, in_progress, last) as three bits
    # of one index (a 2×2×2 array's strides cost registers the loop spills: A/B on the
    # benchmark's batches, 12.2 -> 11.9 ms)
    action = table[(seen << 2) | (in_progress << 1) | last]
    if action == ss.DROP_DUPLICATE:
        drops[lane, DUPLICATE] += 1
        return 0, idx
    if action == ss.WRITE_FIRST or action == ss.WRITE_FIRST_AND_MULTICAST:
        counter[idx] = 1
        ss.max_exponent(exp_reg, idx, exponent, exp_cap, True)
        ovf_reg[idx] = 0
        if header_only:
            regs[idx, :] = 0
        else:
            ss.write_first(regs, idx, source, r, k)
    elif action == ss.ADD or action == ss.ADD_AND_MULTICAST:
        counter[idx] = c + 1
        ss.max_exponent(exp_reg, idx, exponent, exp_cap, False)
        if not header_only and ss.sat_accumulate(regs, idx, source, r, k):
            ovf_reg[idx] = 1  # OverflowFlag: sticky
    if action == ss.UNICAST_RESULT:
        return UNICAST, idx
    if action == ss.WRITE_FIRST_AND_MULTICAST or action == ss.ADD_AND_MULTICAST:
        return MULTICAST, idx
    return 0, idx


def _compile_pipeline(K: int):
    """The batch pipeline for packets of K values, K a constant of the compilation
    (a closure constant: cached per K). With the value count known, the saturating
    adds and register copies of :func:`switch_packet` compile to straight vector code
    and the lane loop keeps fewer values live (A/B on the benchmark's batches:
    12.0-12.2 -> 11.3-11.8 ms)."""

    @numba.njit(cache=True, parallel=True)
    def pipeline(job_id, p, pool_size, port_of_worker, table, exp_cap, n_lanes,
                 job, worker, shadow, slot, flags, exponent, count, step, packet_id, ingress,
                 source, rows,
                 bitmap, use_reg, counter, exp_reg, ovf_reg, regs,
                 out_kind, out_packet, out_exp, out_ovf, out_values, n_out, drops):
        """One pass of the program over a batch; packet i's k values are source[rows[i]]
        (read in place, never gathered), or source[i] when ``rows`` is empty. Slots are
        independent state, so ``n_lanes`` threads (a power of two) share the batch, lane q
        owning one contiguous range of whole 64-slot blocks (so lanes never write one cache
        line of the small registers) and seeing its packets in arrival order (invalid
        packets go to lane i mod n_lanes). Contiguous ranges rather than blocks dealt out
        in turn: a window's packets then reach each lane as one stream of rows, not as runs
        of 64 slots with the other lane's runs between them (the benchmark's switch
        pipeline, A/B in one process: 11.6-11.7 against 12.9-13.1 ms); a batch whose slots
        all sit in one lane's range runs on that lane alone. Lane q writes its answers,
        compacted, from row q·N on and their count to n_out[q]: the kind, the packet
        answered (ascending within a lane; :func:`_compile_collect` merges the lanes into arrival
        order) and the registers. (prange also lets LLVM treat the arrays as unaliased,
        which vectorises the lane loops: measured 2× over a plain njit loop.)"""
        k = K  # a constant of this compilation
        N = job.shape[0]
        in_place = rows.shape[0] == 0  # packet i's values are source[i]: no index array read
        blocks = -(-pool_size // 64)
        span = -(-blocks // n_lanes) * 64  # slots per lane, whole blocks
        for lane in numba.prange(n_lanes):
            q = np.int64(lane)  # (prange's index is unsigned: compared with a signed lane
            # number below it would go through float, packet by packet)
            lo = q * span
            o = q * N
            for i in range(N):
                s = slot[i]
                if n_lanes > 1:  # (one unsigned compare each for the common case: a valid
                    # packet of this lane's range; A/B in one process, 12.2 -> 11.6 ms)
                    v = shadow[i]
                    if np.uint64(s - lo) >= np.uint64(span) or s >= pool_size or np.uint64(v) > 1:
                        if s >= 0 and s < pool_size and v >= 0 and v <= 1:
                            continue  # another lane's
                        if (i & (n_lanes - 1)) != q:
                            continue  # an invalid packet: lane i mod n_lanes drops it
                kind, idx = switch_packet(job_id, p, pool_size, k, port_of_worker, table, exp_cap,
                                          job[i], worker[i], shadow[i], s, flags[i], exponent[i],
                                          count[i], use_key(step[i], packet_id[i]), ingress[i],
                                          source, i if in_place else rows[i],
                                          bitmap, use_reg, counter, exp_reg, ovf_reg, regs,
                                          drops, q)
                if kind > 0:  # the result packet carries the register contents of this moment
                    o = nonneg(o)
                    out_kind[o] = kind
                    out_packet[o] = i
                    out_exp[o] = exp_reg[idx]
                    out_ovf[o] = ovf_reg[idx]
                    # (a few vector moves; the element loop was k scalar loads and stores:
                    # A/B with write_first's, 11.3-11.8 -> 10.7-11.1 ms)
                    copy_row(out_values, o, regs, idx, k)
                    o += 1
            n_out[q] = o - q * N

    return pipeline


#: the batch pipeline (:func:`_compile_pipeline`) for packets of k values, made once per k
_pipeline_for = functools.cache(_compile_pipeline)


def _compile_collect(K: int):
    """The merge of the lanes' answers (:func:`_compile_pipeline`'s) for packets of K
    values, K a constant of the compilation as in the pipeline: each answer's row is
    then a few vector moves, not a call to the C library's memmove."""

    @numba.njit(cache=True, parallel=True)
    def collect(out_kind, out_packet, n_out, worker, slot, shadow, out_exp, out_ovf,
                out_values, at, kind, w, s, v, exp, ovf, values):
        """The batch's answers in arrival order, written to the first rows of (packet,
        kind, worker, slot, shadow, exponent, overflow, values). Each lane's answers are
        in arrival order already (rows q·N … q·N + n_out[q] − 1 of the pipeline's
        outputs), so the order is a merge: an answer's place is its rank in its lane
        plus, for every other lane, how many of that lane's answers came earlier, found
        by a cursor that only moves forward. The lanes place their own answers in
        parallel (no serial scan of the batch; a numpy gather did the copy on one core)."""
        n_lanes = n_out.shape[0]
        N = out_kind.shape[0] // n_lanes
        for lane in numba.prange(n_lanes):
            q = np.int64(lane)
            cursor = np.zeros(n_lanes, np.int64)  # per other lane: its answers before this one
            for j in range(n_out[q]):
                # (indices the pipeline wrote, all ≥ 0: innet.memory.nonneg drops the
                # wrap-around of negative ones; A/B on the benchmark's batches, 11.6 ->
                # 11.2-11.3 ms for the whole switch)
                r = nonneg(q * N + j)
                i = nonneg(out_packet[r])
                at_j = j
                for other in range(n_lanes):
                    if other != q:
                        c = cursor[other]
                        while c < n_out[other] and out_packet[other * N + c] < i:
                            c += 1
                        cursor[other] = c
                        at_j += c
                at_j = nonneg(at_j)
                at[at_j] = i
                kind[at_j] = out_kind[r]
                w[at_j] = worker[i]
                s[at_j] = slot[i]
                v[at_j] = shadow[i]
                exp[at_j] = out_exp[r]
                ovf[at_j] = out_ovf[r]
                copy_row(values, at_j, out_values, r, K)

    return collect


#: the merge (:func:`_compile_collect`) for packets of k values, made once per k
_collect_for = functools.cache(_compile_collect)


#: ``rows`` for a batch whose packet i carries values[i]
_IN_PLACE = np.zeros(0, np.int64)

#: the streaming sum's registers in the order the pipeline takes them
REGISTER_ORDER = ("bitmap", "use", "counter", "exponent", "overflow", "values")


def allocate_registers(pool_size: int, k: int) -> tuple:
    """Zeroed registers of the streaming sum for ``pool_size`` slots per shadow set,
    allocated from the program's declaration (:func:`p4_models.streaming_sum`): each
    entry exactly its declared width and signedness, as many entries as declared.
    Returned in :data:`REGISTER_ORDER`, each starting on a cache line
    (:mod:`innet.memory`). Set v of slot s is row v·pool + s, except in the bitmap (one
    entry per slot, both sets' bits) and the use keys, laid out (pool, 2) so that a
    slot's two keys share a cache line."""
    declared = {reg.name: reg for stage in streaming_sum(k, pool_size).stages
                for reg in stage.registers}
    out = []
    for name in REGISTER_ORDER:
        reg = declared[name]
        shape: tuple[int, ...] = (reg.depth,)
        if name == "values":  # one row of k lanes per slot set, even for k = 1
            shape = (reg.depth, reg.lanes)
        if name == "use":
            shape = (pool_size, 2)
        out.append(aligned_zeros(shape, reg.dtype))  # rows on cache lines (innet.memory)
    return tuple(out)


def default_lanes() -> int:
    """Threads for the slot lanes: Numba's thread count rounded down to a power of two."""
    return 1 << (numba.get_num_threads().bit_length() - 1)


@dataclass
class Results:
    """What the switch sent back in one batch: MULTICAST records go to every worker of
    the job, UNICAST records to ``worker``; ``packet`` is the position in the batch of
    the packet each answers (its step and packet_id name the use the result belongs
    to). The arrays are views into the switch's result buffers, valid until its next
    batch (copy what must outlive it)."""

    packet: np.ndarray
    kind: np.ndarray
    worker: np.ndarray
    slot: np.ndarray
    shadow: np.ndarray
    exponent: np.ndarray
    overflow: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.kind)


class SumSwitch:
    """One job's slot pool on a switch running :func:`p4_models.streaming_sum`.

    ``port_of_worker[w]`` is the ingress port worker w must arrive on (anti-spoofing).
    ``lanes`` threads share the batch by blocks of slots (a power of two; default: as
    many as Numba has threads, rounded down to a power of two — the sums and the
    order of the results do not depend on it).
    """

    def __init__(self, p: int, k: int = 64, pool_size: int = 512, job: int = 0,
                 port_of_worker: np.ndarray | None = None, target: Target = tofino1,
                 lanes: int | None = None, registers: tuple | None = None):
        if not 1 <= p <= 32:
            raise ValueError(f"p must be in 1..32 (32-bit worker bitmap), got {p}")
        self.program: Program = streaming_sum(k, pool_size)
        self.report = self.program.report(target)
        lanes = default_lanes() if lanes is None else lanes
        if lanes < 1 or lanes & (lanes - 1):
            raise ValueError(f"lanes must be a power of two, got {lanes}")
        self.lanes = lanes
        self.p, self.k, self.pool_size, self.job = p, k, pool_size, job
        self.port_of_worker = (np.arange(p, dtype=np.int32) if port_of_worker is None
                               else np.asarray(port_of_worker, dtype=np.int32))
        table = np.zeros((2, 2, 2), dtype=np.int8)
        for key, action in ss.DECISION_TABLE.items():
            table[key] = action
        self.table = table.reshape(-1)  #: indexed by the key's bits (switch_packet)
        slots = 2 * pool_size
        if registers is None:  # a switch of its own; the control plane passes views
            registers = allocate_registers(pool_size, k)
        (self.bitmap, self.use, self.counter, self.exponent, self.overflow,
         self.values) = registers
        if (self.values.shape != (slots, k) or len(self.bitmap) != pool_size
                or self.use.shape != (pool_size, 2)):
            raise ValueError("registers do not match pool_size and k")
        self.drops = np.zeros(len(DROP_REASONS), dtype=np.int64)
        #: control plane: the largest block exponent a proposal may set (Exponents
        #: stage); 127, the header's range, unless the control plane knows better
        self.exponent_cap = 127
        self.packets_in = 0
        self._out = None
        self._res = None

    def clear_slots(self, slots: np.ndarray) -> None:
        """Control plane: reset some slots after a failed window, in *both* shadow sets.

        Clearing only the set in use is not enough: a worker's packet clears its bit
        in the other set, so when a window is lost before its packets arrive the bits
        of the slot's previous use survive, and the next use of that set would take
        every packet for a retransmission and answer with the previous use's kept
        result — a stale sum, accepted as done. (The previous use itself completed:
        had it not, its slot would have been cleared then.)"""
        slots = np.asarray(slots, dtype=np.int64)
        for v in (0, 1):
            idx = v * self.pool_size + slots
            self.counter[idx] = 0
            self.overflow[idx] = 0
        self.bitmap[slots] = 0

    def use_keys(self) -> np.ndarray:
        """The use register as the kernels index it, flat (set v of slot s at 2s + v):
        a view, never a copy (setting the shape of a view raises where one would be
        needed), so what the kernels write is the register."""
        keys = self.use.view()
        keys.shape = (-1,)
        return keys

    def starts_afresh(self, m: int, first_use: int) -> bool:
        """Control plane: whether slots 0 … m − 1 start afresh in both sets when the
        first use of either set of slot s has key ``first_use + s``
        (:func:`use_key` of a step and packet_id s): each set was last used for an
        earlier key, or never (registers as allocated: the key may then be equal).
        Each such use then completes in one round of in-order, lossless packets."""
        first = first_use + np.arange(m, dtype=np.int64)[:, None]
        use = self.use[:m]  # (m, 2): both sets of a slot
        counter = self.counter.reshape(2, -1)[:, :m].T  # set v of slot s at v·pool + s
        bits = np.stack([self.bitmap[:m] & np.uint64(0xFFFFFFFF),  # set v: bits 32v …
                         self.bitmap[:m] >> np.uint64(32)], axis=1)
        never = (use == first) & (counter == 0) & (bits == 0)
        return bool(((use < first) | never).all())

    def drop_counts(self) -> dict[str, int]:
        return dict(zip(DROP_REASONS, self.drops.tolist()))

    def process_native(self, h: dict[str, np.ndarray], values: np.ndarray,
                       ingress: np.ndarray, rows: np.ndarray | None = None) -> Results:
        """Run the pipeline on decoded packets (native arrays, see innet.protocol.decode).
        With ``rows``, packet i's payload is ``values[rows[i]]`` (read in place)."""
        N = len(ingress)
        h_in = h
        fields = ("job", "worker", "shadow", "slot", "flags", "exponent", "count")
        lengths = {name: len(h[name]) for name in fields}
        n_payloads = N if rows is None else len(rows)
        if any(n != N for n in lengths.values()) or n_payloads != N:
            # the Numba loop does no bounds checks: refuse a batch that disagrees with itself
            raise ValueError(f"batch arrays disagree in length: ingress {N}, payloads "
                             f"{n_payloads}, header {lengths}")
        self.packets_in += N
        if values.ndim != 2 or values.shape[1] != self.k:
            # a batch of the wrong width cannot be parsed by this program at all
            self.drops[MALFORMED] += N
            return self._results(0)
        if rows is None:
            rows = _IN_PLACE  # packet i reads values[i]
        else:
            rows = np.asarray(rows, dtype=np.int64)
            if N and (rows.min() < 0 or rows.max() >= len(values)):
                raise ValueError("rows index outside the payload array")
        h = self._native_fields(h, fields)
        step, packet_id = self._use_fields(h_in, N)
        lanes = min(self.lanes, default_lanes())
        out_kind, out_packet, exp, ovf, out_values = self._output_buffers(lanes * N)
        drops = np.zeros((lanes, len(DROP_REASONS)), np.int64)
        n_out = np.zeros(lanes, np.int64)
        _pipeline_for(self.k)(
            self.job, self.p, self.pool_size, self.port_of_worker, self.table,
            np.int32(self.exponent_cap),
            lanes, h["job"], h["worker"], h["shadow"], h["slot"], h["flags"],
            h["exponent"], h["count"], step, packet_id,
            np.ascontiguousarray(ingress, dtype=np.int32),
            np.ascontiguousarray(values, dtype=np.int32), rows,
            self.bitmap, self.use_keys(), self.counter, self.exponent, self.overflow,
            self.values,
            out_kind, out_packet, exp, ovf, out_values, n_out, drops)
        self.drops += drops.sum(axis=0)
        n = int(n_out.sum())
        buffers = self._result_buffers(n)
        _collect_for(self.k)(out_kind, out_packet, n_out, h["worker"], h["slot"], h["shadow"],
                             exp, ovf, out_values, *buffers)
        return Results(*(b[:n] for b in buffers))

    def process(self, packets: np.ndarray, ingress: np.ndarray) -> Results:
        """Run the pipeline on wire-format packets (structured array of packet_dtype)."""
        if packets.dtype != packet_dtype(self.k):
            self.drops[MALFORMED] += len(packets)
            self.packets_in += len(packets)
            return self._results(0)
        h, values = decode(packets)
        return self.process_native(h, values, np.asarray(ingress, dtype=np.int32))

    def process_bytes(self, frames: list[bytes], ingress: np.ndarray) -> Results:
        """Parse raw frames (header + payload after UDP); frames of the wrong length are
        dropped as malformed. Slow path for fuzzing and pcaps, not for training."""
        size = packet_dtype(self.k).itemsize
        good = [i for i, f in enumerate(frames) if len(f) == size]
        self.drops[MALFORMED] += len(frames) - len(good)
        self.packets_in += len(frames) - len(good)
        if not good:
            return self._results(0)
        packets = np.frombuffer(b"".join(frames[i] for i in good), dtype=packet_dtype(self.k))
        return self.process(packets, np.asarray(ingress, dtype=np.int32)[good])

    def _result_buffers(self, n: int) -> tuple:
        """Where a batch's answers are gathered, kept between batches (fresh arrays
        were page-faulted in on every call: ≈ 8 % of the pipeline's time). The Results
        of a call are views into them, valid until this switch's next batch."""
        if self._res is None or len(self._res[0]) < n:
            size = max(n, 1)
            self._res = (np.empty(size, np.int64), np.empty(size, np.int8),
                         np.empty(size, np.int32), np.empty(size, np.int32),
                         np.empty(size, np.int32), np.empty(size, np.int32),
                         np.empty(size, np.uint8), aligned_zeros((size, self.k), np.int32))
        return self._res

    def _output_buffers(self, rows: int):
        """The lanes' answers (``rows`` = lanes × batch size: kind, packet, exponent,
        overflow, values), kept between batches: a fresh (rows, k) array would be
        page-faulted in on every call, which cost more than the pipeline itself."""
        if self._out is None or len(self._out[0]) < rows:
            self._out = (np.zeros(rows, np.int8), np.zeros(rows, np.int64),
                         np.zeros(rows, np.int32), np.zeros(rows, np.uint8),
                         aligned_zeros((rows, self.k), np.int32))
        return tuple(b[:rows] for b in self._out)

    @staticmethod
    def _use_fields(h: dict[str, np.ndarray], N: int) -> tuple[np.ndarray, np.ndarray]:
        """The step and packet_id fields (u32 on the wire) that key a packet's use
        (:func:`use_key`, formed in the kernel); a batch without them is one use."""
        fields = []
        for name in ("step", "packet_id"):
            a = np.ascontiguousarray(h[name] if name in h else np.zeros(N, np.int64))
            if len(a) != N or not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"batch field {name}: expected {N} integers, got "
                                 f"{a.dtype} × {len(a)}")
            fields.append(a)
        return fields[0], fields[1]

    @staticmethod
    def _native_fields(h: dict[str, np.ndarray], fields: tuple[str, ...]) -> dict:
        """The header fields as int32 arrays. A value int32 cannot hold (a field given
        as int64, say worker 2³² + 1) must not wrap into a valid one (worker 1): such a
        packet gets count −1, so the parser drops it as malformed, counted."""
        out, bad = {}, None
        for name in fields:
            a = np.asarray(h[name])
            if a.dtype != np.int32 and a.size:
                wide = (a < -(2**31)) | (a > 2**31 - 1)
                bad = wide if bad is None else bad | wide
            out[name] = np.ascontiguousarray(a, dtype=np.int32)
        if bad is not None and bad.any():
            out["count"] = out["count"].copy()
            out["count"][bad] = -1
        return out

    def _results(self, n: int) -> Results:
        empty = (np.int64, np.int8, np.int32, np.int32, np.int32, np.int32, np.uint8)
        return Results(*(np.zeros(n, t) for t in empty), np.zeros((n, self.k), np.int32))
