"""The worker side of the streaming protocol as one worker's state machine (SwitchML's
worker thread), independent of transport and clock.

A worker sums its vector x with the p − 1 others through a switch job of ``pool``
slots. Slot s carries a sequence of uses: the exponent preamble for chunk s (PHASE
flag, no values that count, the worker's block exponent for chunk s), then chunk s,
chunk s + P, chunk s + 2P, … (P = min(pool, chunks)). Each use flips the slot's
shadow bit (kept per slot across calls, as the switch's sets are). A chunk's packet
carries its values quantised with the agreed exponent of that chunk and the worker's
proposal for the next chunk on the slot; the result returns the chunk's sum and the
next chunk's agreed exponent (the max of the proposals) — so exponents are agreed one
use ahead, as in SwitchML and :mod:`host.switch_allreduce`.

A result is taken only if its step, packet_id and shadow bit name the use the slot
waits for (others are stale or duplicate copies: dropped, counted). A use without a
result by its deadline is sent again (RETRANSMIT flag) with a timeout that doubles
after the second miss up to ``max_timeout``; after ``max_retries`` the chunk is given
up — it and the chunk after it on the slot (whose exponent never came back) go to the
fallback, the slot moves on. With the same inputs the integer sums equal the
in-process engines' bit for bit: same quantiser, same exponents, same integers.

The machine is event-driven: :meth:`StreamWorker.start` returns the first packets,
:meth:`StreamWorker.on_packets` takes what arrived and returns what to send,
:meth:`StreamWorker.on_time` returns the retransmissions due at a given time.
:func:`allreduce` drives one machine over a transport (:class:`UdpTransport`) with
the real clock.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from innet.protocol import decode, edge_flags, encode, flag
from innet.quant import chunk_exponents, scale_of

F_RESULT, F_RETRANSMIT, F_PHASE = flag("RESULT"), flag("RETRANSMIT"), flag("PHASE")
PREAMBLE = -1


@dataclass
class StreamStats:
    packets_sent: int = 0
    retransmissions: int = 0
    results_taken: int = 0
    stale_results: int = 0  #: results of another use of the slot, or copies: dropped
    timeouts: int = 0
    fallback_chunks: int = 0
    wall_s: float = 0.0
    counts: dict = field(default_factory=dict)


class StreamWorker:
    """Worker ``worker`` of a job of p workers, packets of k values, ``pool`` slots."""

    def __init__(self, worker: int, p: int, k: int = 64, pool: int = 512, job: int = 0,
                 timeout: float = 0.010, max_timeout: float = 0.160, max_retries: int = 20):
        self.w, self.p, self.k, self.pool, self.job = worker, p, k, pool, job
        self.timeout, self.max_timeout, self.max_retries = timeout, max_timeout, max_retries
        self.set = np.zeros(pool, np.int64)  #: next shadow set of each slot
        self.done = True

    # -- one allreduce ---------------------------------------------------------------
    def start(self, x: np.ndarray, step: int, now: float) -> np.ndarray:
        x = np.ascontiguousarray(x, np.float32).reshape(-1)
        self.x, self.step, self.n = x, step, len(x)
        k = self.k
        self.C = C = -(-self.n // k)
        self.P = P = min(self.pool, C)
        padded = np.zeros(C * k, np.float32)
        padded[:self.n] = x
        self.chunks = padded.reshape(C, k)
        # local exponents of every chunk and of the P past the end (EXP_MIN)
        self.e_local = chunk_exponents(x[None], k, 0, C + P)[0].astype(np.int64)
        self.agreed = np.zeros(C + P, np.int64)
        self.known = np.zeros(C + P, bool)
        self.sums = np.zeros((C, k), np.int64)
        self.have = np.zeros(C, bool)
        self.fallback = np.zeros(C, bool)
        # per slot: the chunk of its current use (PREAMBLE first), its shadow bit,
        # deadline, misses
        self.cur = np.full(P, PREAMBLE, np.int64)
        self.shadow = np.zeros(P, np.int64)
        self.deadline = np.full(P, np.inf)
        self.misses = np.zeros(P, np.int64)
        self.active = np.ones(P, bool)
        self.stats = StreamStats()
        self.done = C == 0
        if self.done:
            return self._packets(np.zeros(0, np.int64), now)
        return self._packets(np.arange(P), now, fresh=True)

    def _packets(self, slots: np.ndarray, now: float, fresh: bool = True) -> np.ndarray:
        """The packets of the current uses of ``slots`` (new uses flip the slot's set)."""
        slots = np.asarray(slots, np.int64)
        if fresh:
            self.shadow[slots] = self.set[slots]
            self.set[slots] ^= 1
            self.misses[slots] = 0
        chunk = self.cur[slots]
        pre = chunk == PREAMBLE
        pid = np.where(pre, slots, chunk)
        # the exponent field: the proposal for the slot's next chunk
        nxt = np.where(pre, slots, chunk + self.P)
        values = np.zeros((len(slots), self.k), np.int32)
        real = np.flatnonzero(~pre)
        if len(real):
            c = chunk[real]
            e = np.where(self.known[c], self.agreed[c], self.e_local[c])
            f = scale_of(e, self.p)
            q = np.rint(self.chunks[c].astype(np.float64) * f[:, None])
            values[real] = np.clip(q, -2147483648.0, 2147483647.0).astype(np.int32)
        flags = (np.where(pre, F_PHASE, 0) | (0 if fresh else F_RETRANSMIT)
                 | edge_flags(pid, self.C, pre))
        n = len(slots)
        packets = encode({"job": np.full(n, self.job), "worker": np.full(n, self.w),
                          "step": np.full(n, self.step), "packet_id": pid,
                          "shadow": self.shadow[slots], "slot": slots, "flags": flags,
                          "exponent": self.e_local[nxt],
                          "count": np.where(pre, 0, self.k)}, values)
        self.deadline[slots] = now + self._timeout(self.misses[slots])
        self.stats.packets_sent += n
        if not fresh:
            self.stats.retransmissions += n
        return packets

    def _timeout(self, misses: np.ndarray) -> np.ndarray:
        return np.minimum(self.timeout * 2.0 ** np.maximum(misses - 1, 0), self.max_timeout)

    def on_packets(self, packets: np.ndarray, now: float) -> np.ndarray:
        """Results that arrived → the packets of the uses they complete the way for."""
        if self.done or len(packets) == 0:
            return self._packets(np.zeros(0, np.int64), now)
        h, values = decode(packets)
        s = h["slot"].astype(np.int64)
        ok = ((h["flags"] & F_RESULT) != 0) & (h["job"] == self.job) & (s >= 0) & (s < self.P)
        s_ok = np.where(ok, s, 0)
        chunk = self.cur[s_ok]
        want_pid = np.where(chunk == PREAMBLE, s_ok, chunk)
        ok &= (self.active[s_ok] & (h["step"] == self.step) & (h["packet_id"] == want_pid)
               & (h["shadow"] == self.shadow[s_ok]))
        self.stats.stale_results += int((~ok).sum())
        idx = np.flatnonzero(ok)
        slots, first = np.unique(s[idx], return_index=True)
        self.stats.stale_results += len(idx) - len(slots)  # copies in one batch
        rec = idx[first]
        self.stats.results_taken += len(slots)
        chunk = self.cur[slots]
        nxt = np.where(chunk == PREAMBLE, slots, chunk + self.P)
        self.agreed[nxt] = h["exponent"][rec]
        self.known[nxt] = True
        real = chunk != PREAMBLE
        c = chunk[real]
        self.sums[c] = values[rec[real]]
        self.have[c] = True
        return self._advance(slots, now)

    def _advance(self, slots: np.ndarray, now: float) -> np.ndarray:
        """Move ``slots`` to their next use (or retire them past the last chunk)."""
        chunk = self.cur[slots]
        nxt = np.where(chunk == PREAMBLE, slots, chunk + self.P)
        self.cur[slots] = nxt
        live = nxt < self.C
        self.active[slots[~live]] = False
        self.deadline[slots[~live]] = np.inf
        if not self.active.any():
            self.done = True
        return self._packets(slots[live], now)

    def on_time(self, now: float) -> np.ndarray:
        """Retransmissions due at ``now``; uses out of retries are given up."""
        if self.done:
            return self._packets(np.zeros(0, np.int64), now)
        due = np.flatnonzero(self.active & (self.deadline <= now))
        if len(due) == 0:
            return self._packets(np.zeros(0, np.int64), now)
        self.stats.timeouts += len(due)
        self.misses[due] += 1
        out = due[self.misses[due] > self.max_retries]
        if len(out):  # give up: this chunk and the next on the slot fall back
            chunk = self.cur[out]
            for c in chunk[chunk != PREAMBLE]:
                self.fallback[c] = True
            after = np.where(chunk == PREAMBLE, out, chunk + self.P)
            self.fallback[after[after < self.C]] = True
            retry = np.setdiff1d(due, out)
            moved = self._advance(out, now)
        else:
            retry, moved = due, None
        again = self._packets(retry, now, fresh=False)
        return again if moved is None else np.concatenate([moved, again]).astype(again.dtype)

    def next_deadline(self) -> float:
        return float(self.deadline[self.active].min()) if self.active.any() else np.inf

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(Σ over workers as float64 (n,), chunks to aggregate in the fallback)."""
        fallback = self.fallback | ~self.have
        e = np.where(self.known[:self.C], self.agreed[:self.C], self.e_local[:self.C])
        f = scale_of(e, self.p)
        out = (self.sums.astype(np.float64) / f[:, None]).reshape(-1)[:self.n]
        self.stats.fallback_chunks = int(fallback.sum())
        return out, fallback


class UdpTransport:
    """One worker's socket to the switch server's data address."""

    def __init__(self, server: tuple[str, int], k: int, host: str = "127.0.0.1",
                 port: int = 0):
        from innet.protocol.udp import BatchSocket, address_key

        self.sock = BatchSocket(k, host, port, batch=1024)
        self.server = address_key(*server)
        self.address = (self.sock.host, self.sock.port)

    def send(self, packets: np.ndarray) -> None:
        if len(packets):
            self.sock.send(packets, np.full(len(packets), self.server))

    def recv(self, timeout: float) -> np.ndarray:
        if not self.sock.wait(timeout):
            return np.zeros(0, self.sock.dtype)
        frames, keys, _ = self.sock.recv()
        return frames[keys == self.server].copy()

    def close(self) -> None:
        self.sock.close()


def allreduce(worker: StreamWorker, transport, x: np.ndarray, step: int,
              deadline_s: float = 60.0) -> tuple[np.ndarray, np.ndarray, StreamStats]:
    """Drive ``worker`` over ``transport`` with the real clock until its sum is
    complete (or every unfinished use gave up). Returns (sum, fallback chunks, stats)."""
    tick = time.monotonic()
    transport.send(worker.start(x, step, tick))
    while not worker.done:
        now = time.monotonic()
        if now - tick > deadline_s:
            raise TimeoutError(f"worker {worker.w}: allreduce of step {step} still "
                               f"unfinished after {deadline_s} s")
        wait = max(0.0, min(worker.next_deadline() - now, 0.05))
        got = transport.recv(wait)
        now = time.monotonic()
        out = worker.on_packets(got, now) if len(got) else None
        if out is not None and len(out):
            transport.send(out)
        late = worker.on_time(now)
        if len(late):
            transport.send(late)
    total, fallback = worker.result()
    worker.stats.wall_s = time.monotonic() - tick
    return total, fallback, worker.stats


def inprocess_allreduce(workers: list[StreamWorker], switch, X: np.ndarray, step: int,
                        up=None, down=None, max_rounds: int = 100_000):
    """p state machines against an in-process switch (:class:`emulator.switch.SumSwitch`)
    on a simulated clock: each round delivers every packet sent (through the optional
    per-worker up/down :class:`emulator.network.Link` s) and every answer; when nothing
    is in flight the clock jumps to the next deadline. Returns (sums (p, n),
    fallbacks (p, C)). The same protocol as :func:`allreduce` over UDP."""
    from emulator.switch import MULTICAST

    now = 0.0
    out = [w.start(X[i], step, now) for i, w in enumerate(workers)]
    for _ in range(max_rounds):
        if all(w.done for w in workers):
            break
        if not any(len(o) for o in out):  # nothing in flight: wait for the next timeout
            now = min(w.next_deadline() for w in workers)
            out = [w.on_time(now) for w in workers]
            continue
        arrivals, ranks = [], []
        for i, o in enumerate(out):
            keep = np.arange(len(o)) if up is None else up[i].transmit(len(o))
            arrivals.append(o[keep])
            ranks.append(np.arange(len(keep)))
        order = np.argsort(np.concatenate(ranks), kind="stable")
        packets = np.concatenate(arrivals).astype(out[0].dtype)[order]
        ingress = np.concatenate([np.full(len(a), i) for i, a in enumerate(arrivals)])[order]
        res = switch.process(packets, ingress.astype(np.int32))
        answered = decode(packets[res.packet])[0] if len(res) else None
        results = encode({"job": np.full(len(res), switch.job), "worker": res.worker,
                          "step": answered["step"] if len(res) else res.slot,
                          "packet_id": answered["packet_id"] if len(res) else res.slot,
                          "shadow": res.shadow, "slot": res.slot,
                          "flags": F_RESULT | np.where(res.overflow != 0, flag("OVERFLOW"), 0),
                          "exponent": res.exponent}, res.values)
        out = []
        for i, w in enumerate(workers):
            mine = np.flatnonzero((res.kind == MULTICAST) | (res.worker == i))
            if down is not None:
                mine = mine[down[i].transmit(len(mine))]
            now_i = now
            sent = w.on_packets(results[mine], now_i) if len(mine) else w.on_packets(
                results[:0], now_i)
            out.append(sent)
        if not any(len(o) for o in out):
            out = [w.on_time(now) for w in workers]
    else:
        raise RuntimeError("in-process stream allreduce did not finish")
    sums, fallbacks = zip(*(w.result() for w in workers))
    return np.stack(sums), np.stack(fallbacks)
