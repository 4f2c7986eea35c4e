"""Worker side of in-network aggregation: block-floating-point quantisation, packets
over lossy links, a switch slot pool, retransmission, reassembly, dequantisation, and
the ATP-like fallback to the parameter server.

The p workers of a job send chunk after chunk of k values; the job's pool has
``pool_size`` slots per shadow set and chunk c uses slot c mod pool_size; every use
of a slot flips it to the other shadow set (the workers keep one set bit per slot,
across windows and steps, as SwitchML does), so a stale result of the slot's previous
use is never mistaken for the current one. The workers move through the chunks one window
(``pool_size`` chunks) at a time. Every *round* each live worker (re)sends the chunks
of the window whose result it has not received; the links decide which packets arrive
and in which order (the p links are interleaved packet by packet at the switch), the
switch answers, and the multicast/unicast results cross the down links. A worker that
misses a result retransmits after a timeout (the next round); the switch answers a
retransmission to a finished slot with the kept result (unicast) and ignores one to a
filling slot, so no contribution is counted twice.

Two engines run the same protocol:

* the compiled engine (default, :func:`emulator.rounds.window_kernel`: the round
  engine is the emulator's, with the switch's and links' counters): one Numba call
  per window runs every round — links
  (:func:`emulator.network.transmit_into`), the switch program
  (:func:`emulator.switch.switch_packet`, in slot lanes on all cores), delivery and
  reassembly. A worker quantises a packet's values when it sends it (a retransmission
  quantises again: same integers), and a reassembled chunk is dequantised straight
  into the output, so no window-sized int32 buffer is written and read back; the
  exponent a packet proposes for its slot's next use is taken from X as the worker
  fills the packet (in an in-order round, in the slot lanes beside the switch's
  work, so the read of the next window's data overlaps it rather than being a pass
  of its own). Result
  packets refer to their slot's registers rather than copying them: a slot's
  registers cannot change once it completes within its window (every later packet
  to it is a retransmission, answered by unicast), so the values are the same.
  A step in which nothing can go wrong (lossless links holding nothing, live honest
  workers, slots last used before the step: :meth:`SwitchAllreduce._can_pipeline`)
  drops the windows' barrier, which SwitchML does not have either (each slot is a
  pipeline of its own): :func:`emulator.rounds.pipelined_kernel` runs each group of
  slots through all the step's uses, so a worker quantises a chunk from cache one use
  after reading it for its exponent. Outputs, counters and state are the window
  path's, bit for bit.
* the wire engine (``wire=True``): the workers quantise the window into a send
  buffer, every round is encoded in the wire format
  (:mod:`innet.protocol`), run through :meth:`SumSwitch.process`, and the results are
  encoded as RESULT packets; ``capture`` keeps them for a pcap. Slow; for inspection
  and as a cross-check of the compiled engine.

Quantisation (SwitchML, REFERENCE §4.1): chunk c is sent as q = round(x·f_c) with
f_c = INT32_MAX / (p·2^e_c) and 2^e_c ≥ max over workers of |x| in the chunk. The
exponent is agreed one window ahead through the switch: every packet of window b
carries the worker's local exponent for the same slot of window b+1, the switch
keeps the max, and the result returns it. Window 0's exponents come from a preamble
round of value-free packets (PHASE flag). With honest inputs the int32 sum cannot
overflow.

Fallback: chunks whose result came back with the overflow flag, chunks of a window
still unfinished after ``max_retries`` timeouts (a silent worker), and all chunks
when the job got no slots are aggregated by the PS in float from the workers' float
rows; every fallback is counted with its cause.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numba
import numpy as np

from emulator.network import (
    P_DOWN_FROM,
    P_DOWN_TO,
    P_LOSSLESS,
    S_BATCHES,
    S_SENT,
    Link,
    LinkModel,
    stack_links,
)
from emulator.rounds import (
    DUPLICATE_RESULTS,
    F_PHASE,
    F_RETRANSMIT,
    HOLD_FULL,
    LATE_PACKETS,
    LOG_UP,
    N_COUNTS,
    PACKETS_DOWN,
    PACKETS_UP,
    PAYLOAD_Q,
    PAYLOAD_X,
    PAYLOAD_ZERO,
    RESULTS_LOST,
    RETRANSMISSIONS,
    ROUNDS,
    STALE_RESULTS,
    WORKSPACE_ARRAYS,
    hold_buffers,
    pipelined_kernel,
    window_kernel,
    window_workspace,
)
from emulator.switch import (
    DROP_REASONS,
    MULTICAST,
    SumSwitch,
    default_lanes,
    use_key,
)
from innet.memory import CACHE_LINE, lane_rows
from innet.protocol import decode, edge_flags, encode, flag, header, packet_dtype
from innet.quant import chunk_exponents, quantize_chunks, scale_of

F_EDGES = flag("FIRST", "LAST")
MAX_RETRIES = 10_000  # timeouts per window; far past any loss a run survives
MAX_POOL = 1 << header.part_bits("slot")  # slots per shadow set the slot field can name
MAX_JOB = (1 << header.part_bits("job")) - 1  # the largest job id the header holds
#: the most slots per group of a pipelined step (:func:`emulator.rounds.pipelined_kernel`):
#: a group's chunks of X (p·group·k·4 bytes, 0.5 MB on the benchmark's data) stay in
#: L2 from the exponent read to the quantisation one use later (end to end on the
#: benchmark's data, best of 10 interleaved: 22.5 ms with groups of 16, 21.6 with 32,
#: 20.9 with 64, 20.4-20.7 with 128 and 256, 21.5-22.2 with 1024)
PIPELINE_GROUP = 128


def _agreed(done: np.ndarray, returned: np.ndarray, proposed: np.ndarray) -> np.ndarray:
    """The next window's exponents: what the switch returned for the slots that
    completed, the max of the workers' proposals (p, m) for the others (the PS
    fallback then knows them, as the workers do)."""
    return returned if done.all() else np.where(done, returned, proposed.max(axis=0))


@dataclass
class AllreduceStats:
    rounds: int = 0
    packets_up: int = 0
    packets_down: int = 0
    retransmissions: int = 0
    results_lost: int = 0
    duplicate_results: int = 0
    #: packets the links held back and delivered rounds later (both directions)
    late_packets: int = 0
    #: results the workers dropped because they answer an earlier use of their slot
    #: (a late packet's answer, or a late result)
    stale_results: int = 0
    #: packets a link meant to delay but had no room to hold: lost
    hold_full: int = 0
    #: packets (up and down) of the exponent preamble: header-only on the wire
    header_only_packets: int = 0
    fallback_chunks: dict[str, int] = field(
        default_factory=lambda: {"overflow": 0, "silent_worker": 0, "no_slots": 0})
    switch_drops: dict[str, int] = field(default_factory=dict)
    #: per round: (busiest up link, busiest down link, packets up, packets down,
    #: retransmission round?, header-only packets?) — the time model's input
    round_log: list[tuple[int, ...]] = field(default_factory=list)

    def add_counts(self, counts: np.ndarray) -> None:
        self.rounds += int(counts[ROUNDS])
        self.packets_up += int(counts[PACKETS_UP])
        self.packets_down += int(counts[PACKETS_DOWN])
        self.retransmissions += int(counts[RETRANSMISSIONS])
        self.results_lost += int(counts[RESULTS_LOST])
        self.duplicate_results += int(counts[DUPLICATE_RESULTS])
        self.late_packets += int(counts[LATE_PACKETS])
        self.stale_results += int(counts[STALE_RESULTS])
        self.hold_full += int(counts[HOLD_FULL])

    def as_dict(self) -> dict:
        out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(self).items()}
        out.pop("round_log")
        return out


class SwitchAllreduce:
    """Sum p float32 rows through an emulated switch (see the module docstring).

    ``up`` / ``down``: one :class:`LinkModel` per worker (or one for all) for the
    worker→switch and switch→worker directions. ``pool_size=0`` models a job that got
    no slots (everything falls back); ``switch`` runs the job on a pool leased from
    :class:`emulator.control.ControlPlane` instead of a switch of its own.
    ``wire=True`` runs the slow wire-format engine; ``capture`` (with ``wire``) keeps
    up to that many packets for :meth:`captured`.
    """

    def __init__(self, p: int, k: int = 64, pool_size: int = 512,
                 up: LinkModel | list[LinkModel] | None = None,
                 down: LinkModel | list[LinkModel] | None = None,
                 max_retries: int = 20, seed: int = 0, job: int = 0,
                 lanes: int | None = None, wire: bool = False, capture: int = 0,
                 switch: SumSwitch | None = None):
        if switch is not None:  # a pool the control plane leased (emulator.control)
            if (switch.p, switch.k) != (p, k):
                raise ValueError(f"the leased switch runs p={switch.p}, k={switch.k}")
            pool_size, job = switch.pool_size, switch.job
        if not isinstance(max_retries, int) or not 0 <= max_retries <= MAX_RETRIES:
            # the round log holds a row per round: bound it before allocating
            raise ValueError(f"max_retries must be an integer in 0..{MAX_RETRIES}, "
                             f"got {max_retries!r}")
        if not 0 <= pool_size <= MAX_POOL:
            raise ValueError(f"pool_size must be in 0..{MAX_POOL} (the header's 15-bit slot "
                             f"field), got {pool_size!r}")
        if not 0 <= job <= MAX_JOB:
            raise ValueError(f"job must be in 0..{MAX_JOB} (the header's 8-bit job field), "
                             f"got {job!r}")
        self.p, self.k, self.pool_size, self.job = p, k, pool_size, job
        self.max_retries = max_retries
        if switch is None and pool_size > 0:
            switch = SumSwitch(p, k, pool_size, job, lanes=lanes)
        self.switch = switch

        def links(model, offset):
            models = model if isinstance(model, list) else [model or LinkModel()] * p
            if len(models) != p:
                raise ValueError(f"need one link model per worker ({p}), got {len(models)}")
            return [Link(m, seed * 1_000_003 + offset + i) for i, m in enumerate(models)]

        self.up, self.down = links(up, 0), links(down, 1000)
        self._up_arrays, self._down_arrays = stack_links(self.up), stack_links(self.down)
        #: workers whose packets never reach the switch (the PS fallback still gets
        #: their rows, as ATP's does)
        self.silent: set[int] = set()
        #: workers that crashed: nobody waits for their results and the PS fallback
        #: cannot read their rows (see :meth:`crash`)
        self.dead: set[int] = set()
        #: optional f(Q, window) -> Q: what Byzantine workers do to the integers they send
        self.tamper = None
        #: optional f(Q, first_chunk, exponents) -> Q: switch stages in front of the sum
        #: that see every worker's packets of a window once, before they are added
        #: (the FA offload's phase-2 guard, :class:`emulator.offload.GuardSwitch`)
        self.guard = None
        self.step = 0
        self._chunks = 0  # chunks of the vector being summed (FIRST / LAST flags)
        self.wire = wire
        self.capture = capture
        self._captured: list[np.ndarray] = []
        self._set = np.zeros(max(pool_size, 1), np.int32)  #: next shadow set of each slot
        self._send: np.ndarray | None = None
        self._work: tuple | None = None
        #: packets a link may hold back at once (0 when no link delays); the compiled
        #: engine's hold buffers, kept across windows and steps
        delays = [link.model.max_delay for link in self.up + self.down if link.model.delay > 0]
        self.hold_cap = min(1024, 2 * max(pool_size, 1) * max(delays)) if delays else 0
        self._held: tuple | None = None
        self._scratch: np.ndarray | None = None
        #: the wire engine's held packets per link: (wire packets, due batches)
        self._held_wire: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}

    def crash(self, worker: int, after_rounds: int = 1) -> None:
        """``worker`` dies mid-step: its links carry ``after_rounds`` more rounds, then
        nothing, for good. Its unfinished slots time out and go to the PS fallback,
        which sums the live workers' rows (scaled to p). The control plane is
        expected to evict the worker before the next step (a new job of p − 1)."""
        if not 0 <= worker < self.p:
            raise ValueError(f"worker must be in 0..{self.p - 1}, got {worker}")
        for link in (self.up[worker], self.down[worker]):
            link.params[P_LOSSLESS] = 0.0
            link.params[P_DOWN_FROM] = link.batches + after_rounds
            link.params[P_DOWN_TO] = np.inf
        self.dead.add(worker)

    # -- one window of chunks ----------------------------------------------------------
    def _window(self, mode, Q, e_next, m, stats, X=None, first_chunk=0, f=None, out=None,
                propose_from=None):
        """Run rounds until every live worker has every result of the window, or until
        the retries run out. Returns (values (m, k), exponent, overflow, done). With
        mode PAYLOAD_X (compiled engine only) the packets are quantised from X (chunks
        first_chunk…, scales f) as they are sent, and the reassembled chunks are
        written dequantised to ``out`` (n,) float64 instead of returned (values None).
        With ``propose_from`` (compiled engine) the workers take the exponents their
        packets propose from X as they send (those of chunks propose_from …) and
        write them to ``e_next``."""
        p, k, sw = self.p, self.k, self.switch
        preamble = mode == PAYLOAD_ZERO
        shadow = self._set[:m].copy()  # this use of each slot
        self._set[:m] ^= 1
        want = np.ones((p, m), dtype=bool)
        result = None if mode == PAYLOAD_X else np.zeros((m, k), np.int32)
        exp = np.zeros(m, np.int32)
        ovf = np.zeros(m, np.uint8)
        have = np.zeros(m, bool)
        live = np.array([w not in self.silent for w in range(p)])
        base_flags = F_PHASE if preamble else 0
        if self.wire:
            self._wire_window(mode, Q, e_next, m, first_chunk, shadow, base_flags, live,
                              result, exp, ovf, have, want, stats)
        else:
            up_params, up_state = self._up_arrays
            down_params, down_state = self._down_arrays
            counts = np.zeros(N_COUNTS, np.int64)
            log = np.zeros((self.max_retries + 1, 6), np.int64)
            lanes = min(sw.lanes, default_lanes())
            units = max(lanes, -(-m // 64))  # slot lanes, or in-order groups of chunks
            drops = np.zeros((units, len(DROP_REASONS)), np.int64)
            Qa = (np.ascontiguousarray(Q, dtype=np.int32).reshape(-1, k) if mode == PAYLOAD_Q
                  else np.zeros((1, k), np.int32))
            if mode != PAYLOAD_X:
                f, out = np.zeros(m), np.zeros(0)
                if X is None:
                    X = np.zeros((1, 1), np.float32)
            if propose_from is None:
                e_next = np.ascontiguousarray(e_next, dtype=np.int32)
            res = np.zeros((1, k), np.int32) if result is None else result
            # in-order rounds hand their groups of chunks out one at a time, so that a
            # core the host slows down takes fewer (end to end on the benchmark's data,
            # A/B over 60 s: 35.4 -> 30.8 ms while the host ran slow, 28.1 -> 27.0 ms
            # while it ran fast); the chunk size is the calling thread's, restored after
            before = numba.set_parallel_chunksize(1)
            try:
                rounds = window_kernel(
                    self.job, p, sw.pool_size, k, sw.port_of_worker, sw.table,
                    np.int32(sw.exponent_cap), lanes,
                    sw.bitmap, sw.use_keys(), sw.counter, sw.exponent, sw.overflow,
                    sw.values, drops,
                    self.step, mode, Qa, X, X.view(np.int32), first_chunk, f, e_next,
                    -1 if propose_from is None else propose_from, m,
                    shadow, base_flags, live,
                    self.max_retries, up_params, up_state, down_params, down_state,
                    res, out, exp, ovf, have, want, counts, log, self._workspace(m),
                    self._held_buffers(), self._packet_buffers(units))
            finally:
                numba.set_parallel_chunksize(before)
            sw.drops += drops.sum(axis=0)
            sw.packets_in += int(log[:rounds, LOG_UP].sum())
            stats.add_counts(counts)
            stats.round_log.extend(tuple(int(x) for x in row) for row in log[:rounds])
        if self.silent or self.dead:
            waiting = [w for w in range(p) if w not in self.silent and w not in self.dead]
            done = ~want[waiting].any(axis=0) & have
        else:
            done = ~want.any(axis=0) & have
        if not done.all():  # control plane: free the stuck slots before the set is reused
            stuck = np.flatnonzero(~done)
            sw.clear_slots(stuck)
        return result, exp, ovf != 0, done

    def _workspace(self, m: int) -> tuple:
        """The window kernel's arrays, built once for the largest window seen."""
        if (self._work is None or len(self._work) != WORKSPACE_ARRAYS
                or self._work[5].shape[1] < m):
            self._work = window_workspace(self.p, m, self.hold_cap)
        return self._work

    def _packet_buffers(self, lanes: int) -> np.ndarray:
        """The packet buffers of the slot lanes or in-order groups, one
        cache-line-aligned row each."""
        b = self._scratch  # (an unpickled engine's copy may sit anywhere: rebuilt)
        if b is None or len(b) < lanes or b.ctypes.data % CACHE_LINE:
            self._scratch = lane_rows(lanes, self.k)
        return self._scratch

    def _held_buffers(self) -> tuple:
        if self._held is None:
            self._held = hold_buffers(self.p, self.k, self.hold_cap)
        return self._held

    def _wire_window(self, mode, Q, e_next, m, first_chunk, shadow, base_flags, live,
                     result, exp, ovf, have, want, stats):
        """The same rounds with every packet in the wire format (slow path). A link's
        held packets are wire packets, delivered before the round's own when due; a
        worker takes a result only if its step, packet_id and shadow bit name the use
        it waits for."""
        p, k, sw = self.p, self.k, self.switch
        dtype = packet_dtype(k)
        empty = np.zeros(0, dtype)

        def through(direction: int, w: int, link: Link, packets: np.ndarray):
            """What arrives at the far end of ``link`` this batch: its due held packets,
            then this batch's survivors; the ones it delays are kept. Also returns how
            many of ``packets`` were not lost (arrived now or held)."""
            held, due = self._held_wire.get((direction, w), (empty, np.zeros(0, np.int64)))
            ready = due <= link.batches
            now, late, when = link.transmit_late(len(packets))
            stats.late_packets += len(late)
            # (concatenate canonicalises the wire dtype to native order: cast back)
            keep_pk = np.concatenate([held[~ready], packets[late]]).astype(dtype)
            keep_due = np.concatenate([due[~ready], when])
            room = self.hold_cap - int((~ready).sum())
            if len(late) > max(room, 0):  # no room to hold them all: the rest are lost
                cut = int((~ready).sum()) + max(room, 0)
                stats.hold_full += len(keep_pk) - cut
                keep_pk, keep_due = keep_pk[:cut], keep_due[:cut]
            self._held_wire[(direction, w)] = (keep_pk, keep_due)
            return (np.concatenate([held[ready], packets[now]]).astype(dtype),
                    len(np.unique(np.concatenate([now, late]))))

        for attempt in range(self.max_retries + 1):
            flags = base_flags | (F_RETRANSMIT if attempt else 0)
            arrivals = []
            for w in np.flatnonzero(live):
                mine = np.flatnonzero(want[w])
                if attempt:
                    stats.retransmissions += len(mine)
                stats.packets_up += len(mine)
                values = (np.zeros((len(mine), k), np.int32) if mode == PAYLOAD_ZERO
                          else Q[w, mine])
                n_w = len(mine)
                packets = encode({"job": np.full(n_w, self.job), "worker": np.full(n_w, w),
                                  "step": np.full(n_w, self.step),
                                  "packet_id": first_chunk + mine, "shadow": shadow[mine],
                                  "slot": mine, "flags": np.full(n_w, flags) | edge_flags(
                                      first_chunk + mine, self._chunks, mode == PAYLOAD_ZERO),
                                  "count": np.full(n_w, 0 if mode == PAYLOAD_ZERO else k),
                                  "exponent": e_next[w, mine]}, values)
                arrivals.append(through(0, w, self.up[w], packets)[0])
            # interleave the links packet by packet: order by position within each link
            rank = np.concatenate([np.arange(len(a)) for a in arrivals]) if arrivals \
                else np.zeros(0, int)
            merged = np.concatenate(arrivals).astype(dtype) if arrivals else empty
            packets = merged[np.argsort(rank, kind="stable")]
            self._keep(packets)
            w_idx = decode(packets)[0]["worker"] if len(packets) else np.zeros(0, int)
            res = sw.process(packets, sw.port_of_worker[w_idx])
            answered = decode(packets)[0] if len(packets) else None
            down = encode({"job": np.full(len(res), self.job), "worker": res.worker,
                           "step": answered["step"][res.packet] if len(res) else res.slot,
                           "packet_id": (answered["packet_id"][res.packet] if len(res)
                                         else res.slot),
                           "shadow": res.shadow, "slot": res.slot,
                           "flags": flag("RESULT") | np.where(res.overflow != 0,
                                                              flag("OVERFLOW"), 0)
                           | (answered["flags"][res.packet] & (F_PHASE | F_EDGES) if len(res)
                              else 0),
                           "count": np.where((answered["flags"][res.packet] & F_PHASE) != 0
                                             if len(res) else np.zeros(0, bool), 0, k),
                           "exponent": res.exponent}, res.values)
            self._keep(down)
            stats.rounds += 1
            for w in range(p):
                records = np.flatnonzero((res.kind == MULTICAST) | (res.worker == w))
                stats.packets_down += len(records)
                if not live[w]:
                    continue
                got, kept = through(1, w, self.down[w], down[records])
                stats.results_lost += len(records) - kept
                dh, dvalues = decode(got)  # what the worker parses
                s_ = dh["slot"]
                current = ((s_ < m) & (dh["step"] == self.step)
                           & (dh["packet_id"] == first_chunk + s_)
                           & (dh["shadow"] == shadow[np.minimum(s_, m - 1)]))
                stats.stale_results += int((~current).sum())
                dh = {name: a[current] for name, a in dh.items()}
                dvalues = dvalues[current]
                # first copy of each slot's result; later copies are dropped duplicates
                slots, first = np.unique(dh["slot"], return_index=True)
                fresh = want[w, slots]
                stats.duplicate_results += len(dh["slot"]) - int(fresh.sum())
                recs, slots = first[fresh], slots[fresh]
                want[w, slots] = False
                new = ~have[slots]
                recs, slots = recs[new], slots[new]
                result[slots] = dvalues[recs]
                exp[slots] = dh["exponent"][recs]
                ovf[slots] = (dh["flags"][recs] & flag("OVERFLOW")) != 0
                have[slots] = True
            if not want[live].any():
                break

    def _keep(self, packets: np.ndarray) -> None:
        room = self.capture - sum(len(c) for c in self._captured)
        if room > 0:
            self._captured.append(packets[:room].copy())

    def captured(self) -> np.ndarray:
        """The wire-format packets kept so far (up and down, in send order)."""
        if not self._captured:
            raise ValueError("nothing captured: construct with wire=True and capture > 0")
        # concatenate canonicalises structured dtypes to native byte order: back to wire
        return np.concatenate(self._captured).astype(packet_dtype(self.k))

    # -- the whole vector ----------------------------------------------------------------
    def allreduce(self, X: np.ndarray, out: np.ndarray | None = None
                  ) -> tuple[np.ndarray, AllreduceStats]:
        """Σ_i X[i] as float64 (n,), aggregated in the switch, with fallbacks; ``out``
        (float64, n) receives it when given (saves page-faulting a fresh array)."""
        X = np.ascontiguousarray(X, dtype=np.float32)
        p, n = X.shape
        if p != self.p:
            raise ValueError(f"expected {self.p} rows, got {p}")
        if out is None:
            out = np.empty(n, dtype=np.float64)
        elif out.shape != (n,) or out.dtype != np.float64 or not out.flags.c_contiguous:
            raise ValueError(f"out must be a contiguous float64 array of shape ({n},)")
        k, stats = self.k, AllreduceStats()
        C = self._chunks = -(-n // k)
        fallback = np.zeros(C, dtype=bool)
        if self.switch is None:
            stats.fallback_chunks["no_slots"] = C
            X.sum(axis=0, dtype=np.float64, out=out)
            return out, stats
        drops_before = self.switch.drops.copy()
        P = min(self.pool_size, C)  # chunks per window: a short vector uses fewer slots
        windows = -(-C // P)
        # each window's packets carry the workers' exponents for the next window; the
        # compiled workers take them from X as they fill the packets (see _window), the
        # wire engine's are taken before the window. Window 0's come first, agreed in
        # the preamble (header-only packets, PHASE flag)
        compiled = not self.wire

        def proposals(first: int) -> tuple[np.ndarray, dict]:
            if compiled:
                return np.empty((p, P), np.int32), {"X": X, "propose_from": first}
            return chunk_exponents(X, k, first, P), {}

        if self._can_pipeline(P):  # nothing can go wrong: each slot a pipeline of its own
            ovf, done = self._pipelined(X, out, P, windows, stats)
            for b in range(windows):
                self._settle(b * P, min(P, C - b * P), ovf[b], done[b], stats, fallback)
            return self._finish(X, out, fallback, drops_before, stats)
        e_next, propose = proposals(0)
        before = stats.packets_up + stats.packets_down
        _, agreed, _, done = self._window(PAYLOAD_ZERO, None, e_next, P, stats, **propose)
        stats.header_only_packets += stats.packets_up + stats.packets_down - before
        agreed = _agreed(done, agreed, e_next)
        for b in range(windows):
            lo, hi = b * P, (b + 1) * P
            real = min(hi, C) - lo  # chunks of this window inside the vector
            f = scale_of(agreed, p)
            e_next, propose = proposals(hi)
            if self.tamper is not None or self.guard is not None:
                # Byzantine integers, or a guard that reads them: materialise what is sent
                Q = quantize_chunks(X, lo, f, k)
                if self.tamper is not None:
                    Q = self.tamper(Q, b)
                if self.guard is not None:
                    Q = self.guard(Q, lo, agreed)
                result, next_e, ovf, done = self._window(PAYLOAD_Q, Q, e_next, P, stats,
                                                         first_chunk=lo, **propose)
            elif self.wire:  # the wire engine encodes a send buffer, reused window after window
                if self._send is None or self._send.shape != (p, P, k):
                    self._send = np.empty((p, P, k), np.int32)
                Q = quantize_chunks(X, lo, f, k, out=self._send)
                result, next_e, ovf, done = self._window(PAYLOAD_Q, Q, e_next, P, stats,
                                                         first_chunk=lo)
            else:  # compiled engine: quantised as sent, dequantised into out as received
                result, next_e, ovf, done = self._window(PAYLOAD_X, None, e_next, P, stats,
                                                         first_chunk=lo, f=f, out=out,
                                                         **propose)
            if result is not None:
                full = min(real, n // k - lo)  # whole chunks; the vector's tail chunk apart
                if full > 0:
                    np.divide(result[:full], f[:full, None],
                              out=out[lo * k:(lo + full) * k].reshape(full, k))
                if full < real:
                    tail = out[(lo + full) * k:]
                    tail[:] = result[full, :len(tail)] / f[full]
            self._settle(lo, real, ovf, done, stats, fallback)
            agreed = _agreed(done, next_e, e_next)
        return self._finish(X, out, fallback, drops_before, stats)

    @staticmethod
    def _settle(lo: int, real: int, ovf: np.ndarray, done: np.ndarray,
                stats: AllreduceStats, fallback: np.ndarray) -> None:
        """A window's outcome (overflow and done flags per slot; ``real`` of its chunks
        inside the vector, from chunk ``lo``): which chunks fall back to the PS."""
        stats.fallback_chunks["overflow"] += int((ovf & done)[:real].sum())
        stats.fallback_chunks["silent_worker"] += int((~done)[:real].sum())
        fallback[lo:lo + real] = (ovf | ~done)[:real]

    def _finish(self, X: np.ndarray, out: np.ndarray, fallback: np.ndarray,
                drops_before: np.ndarray, stats: AllreduceStats
                ) -> tuple[np.ndarray, AllreduceStats]:
        """The PS sums the chunks that fell back; the step ends."""
        p, n = X.shape
        k = self.k
        if fallback.any():  # ATP-like: the PS sums the affected chunks in float
            cols = (np.flatnonzero(fallback)[:, None] * k + np.arange(k)).reshape(-1)
            cols = cols[cols < n]
            rows = [w for w in range(p) if w not in self.dead]  # a silent one still
            # reaches the PS (ATP-like: it sends its chunks there); a dead one does not
            if len(rows) == p:
                out[cols] = X[:, cols].sum(axis=0, dtype=np.float64)
            else:  # the PS has only the live workers' rows: scale their sum up to p
                out[cols] = X[rows][:, cols].sum(axis=0, dtype=np.float64) * (p / len(rows))
        # this call's drops (the switch's counters run across calls)
        stats.switch_drops = dict(zip(DROP_REASONS, (self.switch.drops - drops_before).tolist()))
        self.step += 1
        return out, stats

    def _can_pipeline(self, m: int) -> bool:
        """Whether this step can run as :func:`emulator.rounds.pipelined_kernel` does:
        the compiled engine, every worker live and honest, every link lossless with
        nothing held back, and slots 0 … m − 1 of both sets last used before this step
        (each use of the step then starts afresh and completes in one round, so the
        windows' barrier changes nothing; a test checks every output and counter
        against the window path)."""
        if (self.wire or self.tamper is not None or self.guard is not None or self.silent
                or self.dead):
            return False
        (up, _), (down, _) = self._up_arrays, self._down_arrays
        if not ((up[:, P_LOSSLESS] != 0).all() and (down[:, P_LOSSLESS] != 0).all()):
            return False
        if self.hold_cap > 0:
            held = self._held_buffers()
            up_held, down_held = held[0], held[8]  # packets held per link (hold_buffers)
            if up_held.any() or down_held.any():
                return False
        # the first use of either set of slot s in this step (the preamble's, then
        # window 0's) has key use_key(step, s) = use_key(step, 0) + s
        return self.switch.starts_afresh(m, int(use_key(self.step, 0)))

    def _pipelined(self, X: np.ndarray, out: np.ndarray, m: int, windows: int,
                   stats: AllreduceStats) -> tuple[np.ndarray, np.ndarray]:
        """The step through :func:`emulator.rounds.pipelined_kernel` (see
        :meth:`_can_pipeline`); the counters as the window path keeps them. Returns
        each window's overflow and done flags (windows, m)."""
        p, k, sw = self.p, self.k, self.switch
        uses = windows + 1  # the preamble, then the windows
        shadows = np.stack([self._set[:m], self._set[:m] ^ 1])
        self._set[:m] ^= uses & 1
        # groups of up to PIPELINE_GROUP slots, at least four per thread when m allows
        group = max(1, min(PIPELINE_GROUP, m // (4 * numba.get_num_threads())))
        groups = -(-m // group)
        drops = np.zeros((groups, len(DROP_REASONS)), np.int64)
        res_exp = np.empty((uses, m), np.int32)
        res_ovf = np.zeros((uses, m), np.uint8)
        have = np.zeros((uses, m), bool)
        off_script = np.zeros(groups, np.int64)
        before = numba.set_parallel_chunksize(1)  # groups handed out one at a time
        try:
            pipelined_kernel(
                self.job, p, sw.pool_size, k, sw.port_of_worker, sw.table,
                np.int32(sw.exponent_cap), sw.bitmap, sw.use_keys(), sw.counter,
                sw.exponent, sw.overflow, sw.values, drops, self.step, X, X.view(np.int32),
                m, windows, group, shadows, np.empty((p, m), np.int32), np.empty((windows, m)), out,
                res_exp, res_ovf, have, off_script, self._packet_buffers(groups),
                np.ones(p, bool), np.zeros((p, m), bool))
        finally:
            numba.set_parallel_chunksize(before)
        if off_script.any() or not have.all():
            raise RuntimeError(f"pipelined step: {int(off_script.sum())} packets answered "
                               "off the protocol's script (a broken invariant)")
        sw.drops += drops.sum(axis=0)
        per_use = p * m  # every worker sends every slot once; every result multicast
        sw.packets_in += uses * per_use
        for _, state in (self._up_arrays, self._down_arrays):
            state[:, S_BATCHES] += uses
            state[:, S_SENT] += uses * m
        counts = np.zeros(N_COUNTS, np.int64)
        counts[ROUNDS] = uses
        counts[PACKETS_UP] = counts[PACKETS_DOWN] = uses * per_use
        stats.add_counts(counts)
        stats.header_only_packets += 2 * per_use
        stats.round_log.extend((m, m, per_use, per_use, 0, int(j == 0)) for j in range(uses))
        return res_ovf[1:] != 0, have[1:]

    def reduce_window(self, Q: np.ndarray, e_next: np.ndarray, window: int,
                      stats: AllreduceStats | None = None):
        """Integer-sum one window: Q (p, m, k) int32 for slots 0..m−1 (m ≤ pool_size)
        and the exponents each worker proposes for the next window (p, m). Returns
        (sums (m, k) int32, agreed next exponents, overflow flags, done flags). Each
        call is a step of its own (its packets carry the next step number), so the
        switch never takes one for a late copy of an earlier call's."""
        stats = stats if stats is not None else AllreduceStats()
        if (Q.ndim != 3 or Q.shape[0] != self.p or Q.shape[2] != self.k
                or not 1 <= Q.shape[1] <= self.pool_size or e_next.shape != Q.shape[:2]):
            raise ValueError(
                f"reduce_window: Q must be (p={self.p}, m <= {self.pool_size}, k={self.k}) and "
                f"e_next (p, m); got {Q.shape} and {e_next.shape}")
        if self.tamper is not None:
            Q = self.tamper(Q.copy(), window)
        result = self._window(PAYLOAD_Q, Q, e_next, Q.shape[1], stats)
        self.step += 1
        return result
