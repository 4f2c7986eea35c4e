"""The compiled round engine of in-network aggregation: p workers, their up and down
links and one switch job, moved through a window of chunks round by round in one Numba
call (:func:`window_kernel`).

Every round each live worker (re)sends the window's chunks whose result it has not
received (quantising the values as it sends: a retransmission quantises again, same
integers), the links decide what arrives and in which order
(:func:`emulator.network.transmit_into`; late packets held back in hold buffers and
delivered first when due), the switch runs its program on each packet
(:func:`emulator.switch.switch_packet`, slot lanes on all cores), the results cross the
down links, and a worker takes a result only if it answers the use its slot waits for
(:func:`_is_current`). Counters and the per-round log are the switch's and the
links' business and live here; the job-level API that quantises, runs the windows,
reassembles and falls back is :class:`host.switch_allreduce.SwitchAllreduce`, and the
same protocol, one worker at a time on a real clock, is :class:`host.stream.StreamWorker`.
"""

from __future__ import annotations

import numba
import numpy as np

from emulator.network import P_LOSSLESS, S_BATCHES, hold_into, transmit_into
from emulator.switch import MULTICAST, switch_packet, use_key
from innet.memory import aligned_zeros, copy_row, prefetch_span
from innet.protocol import flag
from innet.quant.block_float import chunk_exponent, quantize_value, scale_value

# counters the kernel keeps (stats vector)
(ROUNDS, PACKETS_UP, PACKETS_DOWN, RETRANSMISSIONS, RESULTS_LOST, DUPLICATE_RESULTS,
 LATE_PACKETS, STALE_RESULTS, HOLD_FULL) = range(9)
N_COUNTS = 9
# one row per round: packets sent on the busiest up link / down link, totals, retransmit?
# (and whether the round's packets were header-only: the exponent preamble)
LOG_UP_MAX, LOG_DOWN_MAX, LOG_UP, LOG_DOWN, LOG_RETRANSMIT, LOG_HEADER_ONLY = range(6)
F_RETRANSMIT, F_PHASE = flag("RETRANSMIT"), flag("PHASE")
PAYLOAD_Q, PAYLOAD_ZERO, PAYLOAD_X = 0, 1, 2
#: the most chunks a slot lane takes worker by worker in an in-order round: each
#: worker's data is then read in runs of up to 256 KB (end to end on the benchmark's
#: data, best of 10 interleaved: 37.0 ms with groups of 64, 34.8 ms with 256, about
#: 1 ms less again with 1024), while the group's registers (256 KB) stay in L2
IN_ORDER_GROUP = 1024
#: how far ahead (in chunks of one worker) an in-order lane asks for the data it will
#: quantise and take exponents from: each packet reads two streams of X with the
#: switch's work in between, too few misses in flight for the hardware prefetcher
#: (end to end on the benchmark's data, best of 4 interleaved, 100 s: 29.3 → 27.6 ms
#: while the host ran fast, 35.2 → 34.0 ms while it ran slow; 2 chunks ahead gained
#: less, 16 nothing)
PREFETCH_CHUNKS = 8

@numba.njit(cache=True, inline="always")
def _quantize_packet(X, w, base, fc, out, row, k):
    """out[row, :k] = round(X[w, base : base + k]·fc), zero past the end of the row:
    the same values :func:`innet.quant.quantize_chunks` writes (one quantiser for
    both). (``out`` and ``row`` rather than a view of the row: a view made per packet
    costs two calls that count references to ``out`` atomically, on a line both slot
    lanes write — 1 ms of the benchmark's 30, A/B in one process.)"""
    n = X.shape[1]
    if base + k <= n:
        src = X[w, base : base + k]
        for j in range(k):
            out[row, j] = quantize_value(src[j], fc)
    else:
        for j in range(k):
            out[row, j] = quantize_value(X[w, base + j], fc) if base + j < n else 0


@numba.njit(cache=True, inline="always")
def _arrive(job_id, p, pool_size, k, port_of_worker, table, exp_cap, bitmap, use_reg,
            counter, exp_reg, ovf_reg, regs, drops, step, mode, Q, X, first_chunk, f, e_next,
            m, shadow, flags, scratch, q, w, c):
    """Worker w's packet of chunk c of this window (sent this round) through the switch
    program in lane q; returns the switch's (kind, register index)."""
    use = use_key(step, first_chunk + c)  # the packet's step and packet_id
    if mode == PAYLOAD_Q:  # read in place: Q is (p·m, k)
        return switch_packet(
            job_id, p, pool_size, k, port_of_worker, table, exp_cap,
            job_id, w, shadow[c], c, flags, e_next[w, c], k, use,
            port_of_worker[w], Q, w * m + c, bitmap, use_reg, counter,
            exp_reg, ovf_reg, regs, drops, q)
    if mode == PAYLOAD_X:  # the packet's k values, quantised now
        _quantize_packet(X, w, (first_chunk + c) * k, f[c], scratch, q, k)
    return switch_packet(
        job_id, p, pool_size, k, port_of_worker, table, exp_cap,
        job_id, w, shadow[c], c, flags, e_next[w, c],
        0 if mode == PAYLOAD_ZERO else k, use,
        port_of_worker[w], scratch, q, bitmap, use_reg, counter,
        exp_reg, ovf_reg, regs, drops, q)


@numba.njit(cache=True, inline="always")
def _exponents_of(Xbits, k, first, e_next, w):
    """e_next[w, c] = the exponent of worker w's chunk first + c, for every c."""
    for c in range(e_next.shape[1]):
        e_next[w, c] = chunk_exponent(Xbits[w], (first + c) * k, k)


@numba.njit(cache=True, inline="always")
def _is_current(key, v, s, step, first_chunk, shadow, m):
    """Whether a result for slot s of use (key, set v) is one the workers of this window
    wait for: a worker checks the result's step, packet_id and shadow bit."""
    return s < m and v == shadow[s] and key == use_key(step, first_chunk + s)

@numba.njit(cache=True, inline="always")
def _take_result(current, s, w, want, n_want, stale, dup):
    """Worker w receives a result for slot s; ``current``: whether it answers the use
    the slot waits for (:func:`_is_current`). The worker takes it if it still waits for
    it; one of an earlier use is stale, a second copy a duplicate (both dropped,
    counted). The one rule for results arriving late, on a lossless link and through
    a link's arrival list."""
    if not current:
        stale[w] += 1
    elif want[w, s]:
        want[w, s] = False
        n_want[w] -= 1
    else:
        dup[w] += 1


@numba.njit(cache=True, inline="always")
def _slot_of(idx, pool_size):
    """The slot of a register index (set v of slot s is v·pool + s)."""
    return idx - pool_size if idx >= pool_size else idx



@numba.njit(cache=True, inline="always")
def _reassemble(s, p, k, pool_size, mode, live, want, shadow, first_chunk, f, exp_reg,
                ovf_reg, regs, result, dequantized, n, res_exp, res_ovf, have):
    """Slot s after the window: its exponent, overflow flag and values, taken if some
    live worker received its result (the registers cannot change once the slot
    completes within the window), written dequantised (sum / f[s], float64) to its
    place in ``dequantized`` (mode PAYLOAD_X) or to ``result`` (unless it has no
    rows); a chunk nobody
    received reads 0 (the PS replaces it). Indices into ``dequantized`` are unsigned:
    Numba then adds no wrap-around for negative ones, so the loops stay affine and
    vectorise without a view of the row (a view per slot costs two atomic reference
    counts on a line both lanes touch)."""
    got_it = False
    for w in range(p):
        if live[w] and not want[w, s]:
            got_it = True
    idx = shadow[s] * pool_size + s
    if got_it:
        res_exp[s] = exp_reg[idx]
        res_ovf[s] = ovf_reg[idx]
        have[s] = True
    if mode == PAYLOAD_X:
        base = (first_chunk + s) * k
        width = min(k, n - base)
        if width > 0:
            at = np.uint64(base)
            if got_it:  # (two plain loops: LLVM vectorises the division)
                scale = f[s]
                for j in range(width):
                    dequantized[at + np.uint64(j)] = np.float64(regs[idx, j]) / scale
            else:
                for j in range(width):
                    dequantized[at + np.uint64(j)] = 0.0
    elif got_it and result.shape[0] > 0:  # (no rows: only the exponent is wanted)
        copy_row(result, s, regs, idx, k)


@numba.njit(cache=True, parallel=True)
def window_kernel(job_id, p, pool_size, k, port_of_worker, table, exp_cap, n_lanes,
                   bitmap, use_reg, counter, exp_reg, ovf_reg, regs, drops, step,
                   mode, Q, X, Xbits, first_chunk, f, e_next, e_from, m, shadow, base_flags,
                   live,
                   max_retries, up_params, up_state, down_params, down_state,
                   result, dequantized, res_exp, res_ovf, have, want, counts, round_log,
                   workspace, held, scratch):
    """Every round of one window (see the module docstring); returns the rounds run.

    mode PAYLOAD_Q: packet (w, c) carries Q[w·m + c] (read in place); PAYLOAD_X:
    worker w quantises its chunk first_chunk + c of X with scale f[c] when it sends
    the packet (as a SwitchML worker fills its packet buffer), so no send buffer of
    the whole window is written and read back, and the reassembled chunk is written
    dequantised (sum / f[c], float64) to its place in ``dequantized`` (n,) instead of
    ``result``; PAYLOAD_ZERO: no values (the exponent preamble). Links and
    workers are independent, so the up and down phases run in parallel over workers
    (each link's stream is sequential: results do not depend on the thread count).
    ``workspace`` (:func:`window_workspace`) holds the per-round arrays, allocated once
    per engine: fresh ones every window cost page faults on ~10 MB (huge pages zeroed
    whole), more than the rounds' own work.

    ``e_next[w, c]`` is the exponent worker w's packet for slot c proposes (for the
    slot's next use). With ``e_from`` >= 0 the workers take it from X (``Xbits``, its
    float32 rows viewed as int32): that of their chunk e_from + c
    (:func:`innet.quant.block_float.chunk_exponent`), as a SwitchML worker does when
    it fills the packet — in an in-order first round packet by packet in the slot
    lanes, so the read of that data overlaps the switch's work instead of being a
    pass of its own; otherwise all of them before the first packet needs one.

    ``held`` (:func:`hold_buffers`) are the packets the links hold back
    (:func:`emulator.network.hold_into`), kept across windows and steps: up packets
    with their header and values, result packets with the use they answer. A link
    delivers its due packets before the round's own; the switch judges a late packet
    like any other (its use check drops one of an earlier use), and a worker takes a
    result only for the use it waits for (:func:`_is_current`).

    ``scratch`` (:func:`innet.memory.lane_rows`) are the packet buffers and ``drops``
    the drop counters of the slot lanes (general rounds) or of the groups of chunks
    (in-order rounds): at least max(n_lanes, ⌈m / 64⌉) rows of each. A worker quantises
    a packet into its row and the switch reads it from there. Each row starts on a
    cache line of its own: a buffer that a lane shared a line with, or that split its
    vector accesses across lines, cost a fifth of the allreduce (see innet.memory)."""
    sent = np.zeros(p, np.int64)  # per worker, this round
    arrived = np.zeros(p, np.int64)
    down_sent = np.zeros(p, np.int64)
    lost = np.zeros(p, np.int64)
    dup = np.zeros(p, np.int64)
    stale = np.zeros(p, np.int64)
    late_up = np.zeros(p, np.int64)
    late_down = np.zeros(p, np.int64)
    full = np.zeros(p, np.int64)
    n_want = np.zeros(p, np.int64)  # results each worker still waits for
    in_order = np.zeros(p, np.bool_)  # per link: chunk t arrived as its t-th packet
    # per_link: chunk ids in arrival order, per up link (−h−1: held packet h);
    # out_kind / out_idx: the switch's answer to each of them; pend: per worker, the
    # chunks it may still want; mine: the records one down link carries; mark: which
    # of them arrived (duplicates count once)
    (per_link, out_kind, out_idx, pos, keys, pend, rec_kind, rec_slot, rec_dest,
     mine, dpos, dkeys, mark, rec_key, rec_v, late, due, rec_cur) = workspace
    (hu_n, hu_use, hu_shadow, hu_slot, hu_exp, hu_flags, hu_due, hu_values,
     hd_n, hd_use, hd_shadow, hd_slot, hd_due) = held
    cap = hu_use.shape[1]  # 0: no link delays
    n_pend = np.full(p, m, np.int64)
    for w in range(p):
        for c in range(m):
            pend[w, c] = c
        if live[w]:
            for c in range(m):
                if want[w, c]:
                    n_want[w] += 1
    # e_from >= 0: packet by packet in an in-order first round (only lossless up links can
    # give one, and they hold nothing back that would need the exponent earlier)
    filled = e_from < 0
    if not filled:
        eager = False
        for w in range(p):
            if live[w] and up_params[w, P_LOSSLESS] == 0.0:
                eager = True
        if eager:
            for w in numba.prange(p):
                _exponents_of(Xbits, k, e_from, e_next, w)
            filled = True
    n_blocks = 8 * n_lanes  # of arrival slots, when the result packets are gathered
    block_recs = np.zeros(n_blocks + 1, np.int64)
    rounds = 0
    for attempt in range(max_retries + 1):
        flags = base_flags | (F_RETRANSMIT if attempt > 0 else 0)
        # -- up: each live worker sends its wanted chunks through its link
        for w in numba.prange(p):
            sent[w] = 0
            arrived[w] = 0
            in_order[w] = not live[w]
            if live[w]:
                n_w = n_pend[w]
                if n_want[w] != n_w:  # (pend[w] holds every wanted chunk: when the
                    n_w = 0  # counts agree, all of it is still wanted)
                    for i in range(n_pend[w]):  # the chunks still wanted, ascending
                        c = pend[w, i]
                        if want[w, c]:
                            pend[w, n_w] = c
                            n_w += 1
                    n_pend[w] = n_w
                n_rel = 0  # held packets due now arrive first
                if cap > 0:
                    batch = up_state[w, S_BATCHES]
                    for h in range(hu_n[w]):
                        if 0 <= hu_due[w, h] <= batch:
                            per_link[w, n_rel] = -h - 1
                            hu_due[w, h] = -1  # released: compacted after the switch
                            n_rel += 1
                got = transmit_into(up_params[w], up_state[w], n_w, pos[w], keys[w])
                if up_params[w, P_LOSSLESS] == 0.0:  # lossless: arrival order = send order
                    got, n_late = hold_into(up_params[w], up_state[w], pos[w], got,
                                            late[w], due[w])
                    for j in range(n_late):  # held back: keep the packet as it was sent
                        c = pend[w, late[w, j]]
                        h = hu_n[w]
                        if h >= cap:
                            full[w] += 1  # no room to hold it: lost
                            continue
                        hu_n[w] += 1
                        hu_use[w, h] = use_key(step, first_chunk + c)
                        hu_shadow[w, h] = shadow[c]
                        hu_slot[w, h] = c
                        hu_exp[w, h] = e_next[w, c]
                        hu_flags[w, h] = flags
                        hu_due[w, h] = due[w, j]
                        if mode == PAYLOAD_X:
                            _quantize_packet(X, w, (first_chunk + c) * k, f[c],
                                             hu_values[w], h, k)
                        elif mode == PAYLOAD_Q:
                            hu_values[w, h] = Q[w * m + c]
                        else:
                            hu_values[w, h] = 0
                    late_up[w] += n_late
                    for j in range(got):
                        per_link[w, n_rel + j] = pend[w, pos[w, j]]
                else:
                    for j in range(got):
                        per_link[w, n_rel + j] = pend[w, j]
                    in_order[w] = n_rel == 0 and n_w == m  # pend[w] is then 0 … m − 1
                sent[w] = n_w
                arrived[w] = n_rel + got
        longest = arrived.max()
        if not filled and not in_order.all():
            for w in numba.prange(p):
                _exponents_of(Xbits, k, e_from, e_next, w)
            filled = True
        if in_order.all():  # (the switch)
            # every link delivers chunk t as its t-th packet, so each slot sees the
            # workers in ascending order, as in the interleaving below; slots are
            # independent, so a lane may take a group of chunks worker by worker
            # (each worker's data then read in order, not p rows at once)
            # (groups of 64 … IN_ORDER_GROUP chunks, at least two per lane when m allows).
            # The groups are handed out one at a time (the caller sets Numba's parallel
            # chunk size to 1), so a thread that the host slows down takes fewer of them;
            # group g uses packet buffer and drop counters g
            group = min(IN_ORDER_GROUP, max(64, (m // (2 * n_lanes)) // 64 * 64))
            for g in numba.prange(-(-m // group)):
                q = np.int64(g)
                for b0 in range(q * group, q * group + 1):
                    for w in range(p):
                        for c in range(b0, min(b0 + group, arrived[w])):
                            if mode == PAYLOAD_X:  # ask for the data PREFETCH_CHUNKS ahead
                                ahead = c + PREFETCH_CHUNKS
                                prefetch_span(X, w, (first_chunk + ahead) * k, k)
                                if not filled:
                                    prefetch_span(X, w, (e_from + ahead) * k, k)
                            if not filled:
                                e_next[w, c] = chunk_exponent(
                                    Xbits[w], (e_from + c) * k, k)
                            out_kind[w, c], out_idx[w, c] = _arrive(
                                job_id, p, pool_size, k, port_of_worker, table, exp_cap,
                                bitmap, use_reg, counter, exp_reg, ovf_reg, regs, drops,
                                step, mode, Q, X, first_chunk, f, e_next, m, shadow,
                                flags, scratch, q, w, c)
        else:  # the switch, in slot lanes; the links interleave packet by packet
            for lane in numba.prange(n_lanes):
                q = np.int64(lane)  # (prange's index is unsigned: compared with a signed
                # lane number it would be converted to float, packet by packet)
                for t in range(longest):
                    for w in range(p):
                        if t >= arrived[w]:
                            continue
                        c = per_link[w, t]
                        if c < 0:  # a late packet, as it was sent rounds (or windows) ago
                            h = -c - 1
                            s_h = hu_slot[w, h]
                            if ((s_h >> 6) & (n_lanes - 1)) != q:
                                continue
                            kind, idx = switch_packet(
                                job_id, p, pool_size, k, port_of_worker, table, exp_cap,
                                job_id, w, hu_shadow[w, h], s_h, hu_flags[w, h], hu_exp[w, h],
                                0 if (hu_flags[w, h] & F_PHASE) != 0 else k, hu_use[w, h],
                                port_of_worker[w], hu_values[w], h, bitmap,
                                use_reg, counter, exp_reg, ovf_reg, regs, drops, q)
                            out_kind[w, t] = kind
                            out_idx[w, t] = idx
                            continue
                        if ((c >> 6) & (n_lanes - 1)) != q:
                            continue
                        out_kind[w, t], out_idx[w, t] = _arrive(
                            job_id, p, pool_size, k, port_of_worker, table, exp_cap, bitmap,
                            use_reg, counter, exp_reg, ovf_reg, regs, drops, step, mode, Q, X,
                            first_chunk, f, e_next, m, shadow, flags, scratch, q, w, c)
        if not filled:  # every live worker sent all m packets: the rest stay silent
            for w in numba.prange(p):
                if not live[w]:
                    _exponents_of(Xbits, k, e_from, e_next, w)
            filled = True
        # the result packets, in arrival order: counted per block of arrival slots,
        # then written from each block's offset (blocks in parallel)
        span = -(-longest // n_blocks)
        for b in numba.prange(n_blocks):
            block_recs[b + 1] = 0
            for t in range(b * span, min((b + 1) * span, longest)):
                for w in range(p):
                    if t < arrived[w] and out_kind[w, t] > 0:
                        block_recs[b + 1] += 1
        for b in range(n_blocks):
            block_recs[b + 1] += block_recs[b]
        n_rec = block_recs[n_blocks]
        for b in numba.prange(n_blocks):
            r = block_recs[b]
            for t in range(b * span, min((b + 1) * span, longest)):
                for w in range(p):
                    if t < arrived[w] and out_kind[w, t] > 0:
                        rec_kind[r] = out_kind[w, t]
                        rec_dest[r] = w
                        c = per_link[w, t]
                        if c >= 0:  # the use the answered packet belonged to
                            rec_key[r] = use_key(step, first_chunk + c)
                            rec_v[r] = shadow[c]
                        else:
                            rec_key[r] = hu_use[w, -c - 1]
                            rec_v[r] = hu_shadow[w, -c - 1]
                        # what every worker checks of it, judged once here
                        s_r = _slot_of(out_idx[w, t], pool_size)
                        rec_slot[r] = s_r
                        rec_cur[r] = _is_current(rec_key[r], rec_v[r], s_r, step, first_chunk,
                                                 shadow, m)
                        r += 1
        if cap > 0:  # forget the held packets that were delivered
            for w in numba.prange(p):
                kept = 0
                for h in range(hu_n[w]):
                    if hu_due[w, h] >= 0:
                        if kept != h:
                            hu_use[w, kept] = hu_use[w, h]
                            hu_shadow[w, kept] = hu_shadow[w, h]
                            hu_slot[w, kept] = hu_slot[w, h]
                            hu_exp[w, kept] = hu_exp[w, h]
                            hu_flags[w, kept] = hu_flags[w, h]
                            hu_due[w, kept] = hu_due[w, h]
                            hu_values[w, kept] = hu_values[w, h]
                        kept += 1
                hu_n[w] = kept
        # -- down: multicast results reach every port, unicasts their worker (a link
        # carries at most m multicasts and 2m unicasts: its worker's packets, duplicated)
        for wu in numba.prange(p):
            w = np.int64(wu)  # (signed: compared with rec_dest below)
            lost[w] = 0
            dup[w] = 0
            if live[w] and down_params[w, P_LOSSLESS] != 0.0 and (cap == 0 or hd_n[w] == 0):
                # a lossless link delivers its records once each, in order, now (it
                # holds nothing back): take them as they are sent (the general path
                # below gives the same result through its arrival lists)
                n_w = 0
                for r in range(n_rec):
                    if rec_kind[r] == MULTICAST or rec_dest[r] == w:
                        n_w += 1
                        _take_result(rec_cur[r], rec_slot[r], w, want, n_want, stale, dup)
                down_sent[w] = n_w
                transmit_into(down_params[w], down_state[w], n_w, dpos[w], dkeys[w])
                continue
            n_w = 0
            for r in range(n_rec):
                if rec_kind[r] == MULTICAST or rec_dest[r] == w:
                    mine[w, n_w] = r
                    n_w += 1
            down_sent[w] = n_w
            if not live[w]:
                continue
            if cap > 0 and hd_n[w] > 0:  # late results due now arrive first
                batch = down_state[w, S_BATCHES]
                kept = 0
                for h in range(hd_n[w]):
                    if hd_due[w, h] <= batch:
                        s_h = hd_slot[w, h]
                        _take_result(_is_current(hd_use[w, h], hd_shadow[w, h], s_h, step,
                                                 first_chunk, shadow, m),
                                     s_h, w, want, n_want, stale, dup)
                    else:
                        hd_use[w, kept] = hd_use[w, h]
                        hd_shadow[w, kept] = hd_shadow[w, h]
                        hd_slot[w, kept] = hd_slot[w, h]
                        hd_due[w, kept] = hd_due[w, h]
                        kept += 1
                hd_n[w] = kept
            got = transmit_into(down_params[w], down_state[w], n_w, dpos[w], dkeys[w])
            n_late = 0
            if down_params[w, P_LOSSLESS] == 0.0:
                got, n_late = hold_into(down_params[w], down_state[w], dpos[w], got,
                                        late[w], due[w])
            delivered = 0
            for j in range(n_late):  # held back: keep which use the result answers
                if mark[w, late[w, j]] == 0:
                    mark[w, late[w, j]] = 1
                    delivered += 1  # not lost: it arrives later
                h = hd_n[w]
                if h >= cap:
                    full[w] += 1
                    continue
                r = mine[w, late[w, j]]
                hd_n[w] += 1
                hd_use[w, h] = rec_key[r]
                hd_shadow[w, h] = rec_v[r]
                hd_slot[w, h] = rec_slot[r]
                hd_due[w, h] = due[w, j]
            late_down[w] += n_late
            for j in range(got):
                r = mine[w, dpos[w, j]]
                if mark[w, dpos[w, j]] == 0:  # duplicates of a record count once as delivered
                    mark[w, dpos[w, j]] = 1
                    delivered += 1
                _take_result(rec_cur[r], rec_slot[r], w, want, n_want, stale, dup)
            lost[w] = n_w - delivered
            for j in range(got):
                mark[w, dpos[w, j]] = 0
            for j in range(n_late):
                mark[w, late[w, j]] = 0
        counts[PACKETS_UP] += sent.sum()
        counts[PACKETS_DOWN] += down_sent.sum()
        counts[RESULTS_LOST] += lost.sum()
        counts[DUPLICATE_RESULTS] += dup.sum()
        if attempt > 0:
            counts[RETRANSMISSIONS] += sent.sum()
        round_log[rounds, LOG_UP_MAX] = sent.max()
        round_log[rounds, LOG_DOWN_MAX] = down_sent.max()
        round_log[rounds, LOG_UP] = sent.sum()
        round_log[rounds, LOG_DOWN] = down_sent.sum()
        round_log[rounds, LOG_RETRANSMIT] = 1 if attempt > 0 else 0
        round_log[rounds, LOG_HEADER_ONLY] = 1 if mode == PAYLOAD_ZERO else 0
        rounds += 1
        counts[ROUNDS] += 1
        pending = False
        for w in range(p):
            if live[w] and n_want[w] > 0:
                pending = True
        if not pending:
            break
    counts[LATE_PACKETS] += late_up.sum() + late_down.sum()
    counts[STALE_RESULTS] += stale.sum()
    counts[HOLD_FULL] += full.sum()
    # reassembly: a result packet carries its slot's registers, which cannot change
    # once the slot completes within the window (see the module docstring)
    # by blocks of 64 slots, handed out one at a time like the in-order groups
    n = dequantized.shape[0]
    for block in numba.prange(-(-m // 64)):
        for s in range(block * 64, min(block * 64 + 64, m)):
            _reassemble(s, p, k, pool_size, mode, live, want, shadow, first_chunk, f,
                        exp_reg, ovf_reg, regs, result, dequantized, n, res_exp, res_ovf,
                        have)
    return rounds


@numba.njit(cache=True, parallel=True)
def pipelined_kernel(job_id, p, pool_size, k, port_of_worker, table, exp_cap,
                     bitmap, use_reg, counter, exp_reg, ovf_reg, regs, drops, step,
                     X, Xbits, m, windows, group, shadows, proposals, f, out,
                     res_exp, res_ovf, have, off_script, scratch, live, nobody_waits):
    """A whole step (the exponent preamble, then ``windows`` windows of m chunks of X)
    when nothing can go wrong: every link lossless and holding nothing, every worker
    live and honest, and every slot's two sets last used before this step (so each
    use starts afresh, see :func:`emulator.switch.switch_packet`). Each slot is then
    a pipeline of its own, as in SwitchML: a worker sends a slot's next chunk as soon
    as it has the slot's result, and what a slot computes does not depend on how its
    uses interleave with other slots'. So groups of ``group`` slots, handed out one at
    a time, run through all the step's uses before the next group, rather than every
    slot through one window before the next window (:func:`window_kernel`, which
    needs that barrier for its retransmission rounds). Each worker reads a chunk of X
    from memory once, for the exponent it proposes, and again one use later, from
    cache, to quantise it (behind a barrier the data of a window, p·m·k·4 bytes, has
    long left the caches when it is quantised).

    Use j of a slot is the preamble (j = 0: header-only packets, PHASE flag, proposing
    the exponents of window 0) or window j − 1; it uses set ``shadows[j & 1]`` of each
    slot and the step's ``use_key(step, first chunk + slot)``. Per packet the work is
    the window kernel's (:func:`_arrive`: quantise with the agreed scale, then
    :func:`emulator.switch.switch_packet`), and per slot the reassembly
    (:func:`_reassemble`: dequantised into ``out``). Writes ``f`` (windows, m), the
    scale of each window's chunks (the switch's exponent, :func:`scale_value`), and
    res_exp / res_ovf / have (windows + 1, m), what each use returned;
    ``off_script[g]`` counts packets group g saw answered otherwise than the protocol
    has it with the preconditions met (each slot's last worker completes it, the
    others are added; the caller treats a nonzero count as a broken invariant).
    ``proposals`` (p, m) and ``scratch`` (groups, k') are workspace; ``live`` (p,) all
    true and ``nobody_waits`` (p, m) all false say, in :func:`_reassemble`'s terms,
    that every worker has every result. (Arrays are made by the caller: an array
    made here is a parallel loop of its own, and with the caller's chunk size of 1
    one of p·m elements costs a schedule entry per element.)"""
    n = X.shape[1]
    no_rows = scratch[:0]  # _reassemble: the preamble's values are not wanted
    for g in numba.prange(-(-m // group)):
        q = np.int64(g)
        lo = q * group
        hi = min(lo + group, m)
        for j in range(windows + 1):
            mode = PAYLOAD_ZERO if j == 0 else PAYLOAD_X
            first = 0 if j == 0 else (j - 1) * m  # this use's first chunk
            ahead_of = j * m  # the chunks whose exponents this use's packets propose
            flags = F_PHASE if j == 0 else 0
            shadow = shadows[j & 1]
            scale = f[max(j - 1, 0)]
            for w in range(p):
                for c in range(lo, hi):
                    prefetch_span(X, w, (ahead_of + c + PREFETCH_CHUNKS) * k, k)
                    proposals[w, c] = chunk_exponent(Xbits[w], (ahead_of + c) * k, k)
                    kind, _ = _arrive(
                        job_id, p, pool_size, k, port_of_worker, table, exp_cap, bitmap,
                        use_reg, counter, exp_reg, ovf_reg, regs, drops, step, mode, scratch,
                        X, first, scale, proposals, m, shadow, flags, scratch, q, w, c)
                    if kind != (MULTICAST if w == p - 1 else 0):
                        off_script[q] += 1
            for c in range(lo, hi):
                _reassemble(c, p, k, pool_size, mode, live, nobody_waits, shadow, first,
                            scale, exp_reg, ovf_reg, regs, no_rows, out, n, res_exp[j],
                            res_ovf[j], have[j])
                if j < windows:
                    f[j, c] = scale_value(res_exp[j, c], p)


#: how many arrays :func:`window_workspace` returns (an engine unpickled from an earlier
#: version, with another set, gets fresh ones)
WORKSPACE_ARRAYS = 18


def window_workspace(p: int, m: int, cap: int = 0) -> tuple:
    """The arrays :func:`window_kernel` reuses round after round for windows of up to m
    chunks, with hold buffers of ``cap`` packets per link (see its docstring for each
    one's role)."""
    up = (p, 2 * m + cap)  # a link delivers at most twice what it was given
    # (duplication), after the late packets it held
    # m multicasts, the unicast answers to 2m arrivals and to the late ones, and the
    # multicasts late packets of an earlier use may complete
    down = (p, 3 * m + (p + 1) * cap)
    records = p * (2 * m + cap)
    return (np.empty(up, np.int32), np.zeros(up, np.int8), np.zeros(up, np.int32),
            np.empty(up, np.int64), np.empty(up, np.float64), np.empty((p, m), np.int32),
            np.empty(records, np.int8), np.empty(records, np.int32),
            np.empty(records, np.int32), np.empty(down, np.int64),
            np.empty((p, 2 * down[1]), np.int64), np.empty((p, 2 * down[1]), np.float64),
            np.zeros(down, np.int8), np.empty(records, np.int64), np.empty(records, np.int32),
            np.empty((p, 2 * down[1]), np.int64), np.empty((p, 2 * down[1]), np.int64),
            np.empty(records, np.bool_))


def hold_buffers(p: int, k: int, cap: int) -> tuple:
    """What the links hold back for :func:`window_kernel`, ``cap`` packets per link
    and direction (a packet that finds its link's buffer full is lost, counted as
    ``hold_full``): up, the count, use key, shadow, slot, exponent, flags, due batch
    and k values of each held packet; down, the count, use key, shadow, slot and due
    batch of each held result (the worker only checks which use a result answers;
    one it takes is a current slot's, whose registers no longer change)."""
    i32 = lambda: np.zeros((p, cap), np.int32)  # noqa: E731
    return (np.zeros(p, np.int64), np.zeros((p, cap), np.int64), i32(), i32(), i32(), i32(),
            np.zeros((p, cap), np.int64), aligned_zeros((p, cap, k), np.int32),
            np.zeros(p, np.int64), np.zeros((p, cap), np.int64), i32(), i32(),
            np.zeros((p, cap), np.int64))


