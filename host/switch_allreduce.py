"""Worker side of in-network aggregation: block-floating-point quantisation, packets
over lossy links, a switch slot pool, retransmission, reassembly, dequantisation, and
the ATP-like fallback to the parameter server.

The p workers of a job send chunk after chunk of k values; the job's pool has
``pool_size`` slots per shadow set and chunk c uses slot c mod pool_size in set
(c div pool_size) mod 2. The workers move through the chunks one window
(``pool_size`` chunks) at a time: every *round* each worker (re)sends the chunks of
the window whose result it has not received; a round is one batched call into the
switch, so the per-packet work stays in numpy and Numba. A worker that misses a
result retransmits after a timeout (the next round); the switch answers a
retransmission to a finished slot with the kept result (unicast) and ignores one to a
filling slot, so no contribution is counted twice.

Quantisation (SwitchML, REFERENCE §4.1): chunk c is sent as q = round(x·f_c) with
f_c = INT32_MAX / (p·2^e_c) and 2^e_c ≥ max over workers of |x| in the chunk. The
exponent is agreed one window ahead through the switch: every packet of window b
carries the worker's local exponent for the same slot of window b+1, the switch
keeps the max, and the result returns it. Window 0's exponents come from a preamble
round of value-free packets. With honest inputs the int32 sum cannot overflow.

Fallback: chunks whose result came back with the overflow flag, chunks of a window
still unfinished after ``max_retries`` timeouts (a silent worker), and all chunks
when the job got no slots are aggregated by the PS in float from the workers' float
rows; every fallback is counted with its cause.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from emulator.network import Link, LinkModel
from emulator.switch import MULTICAST, SumSwitch
from innet.protocol import flag
from innet.quant import EXP_MIN, chunk_exponents, quantize_chunks, scale_of


@dataclass
class AllreduceStats:
    rounds: int = 0
    packets_up: int = 0
    packets_down: int = 0
    retransmissions: int = 0
    results_lost: int = 0
    duplicate_results: int = 0
    fallback_chunks: dict[str, int] = field(
        default_factory=lambda: {"overflow": 0, "silent_worker": 0, "no_slots": 0})
    switch_drops: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(self).items()}


class SwitchAllreduce:
    """Sum p float32 rows through an emulated switch (see the module docstring).

    ``up`` / ``down``: one :class:`LinkModel` per worker (or one for all) for the
    worker→switch and switch→worker directions. ``pool_size=0`` models a job that got
    no slots (everything falls back).
    """

    def __init__(self, p: int, k: int = 64, pool_size: int = 512,
                 up: LinkModel | list[LinkModel] | None = None,
                 down: LinkModel | list[LinkModel] | None = None,
                 max_retries: int = 20, seed: int = 0, job: int = 0):
        self.p, self.k, self.pool_size, self.job = p, k, pool_size, job
        self.max_retries = max_retries
        self.switch = SumSwitch(p, k, max(pool_size, 1), job) if pool_size > 0 else None

        def links(model, offset):
            models = model if isinstance(model, list) else [model or LinkModel()] * p
            if len(models) != p:
                raise ValueError(f"need one link model per worker ({p}), got {len(models)}")
            return [Link(m, seed * 1_000_003 + offset + i) for i, m in enumerate(models)]

        self.up, self.down = links(up, 0), links(down, 1000)
        self.silent: set[int] = set()  #: workers that never send (crashed)
        #: optional f(Q, window) -> Q: what Byzantine workers do to the integers they send
        self.tamper = None
        self.step = 0

    # -- one window of chunks ----------------------------------------------------------
    def _round(self, Q, e_next, want, shadow, preamble, retransmit, stats):
        """Send every wanted (worker, chunk) once; return per-worker deliveries."""
        p, k = self.p, self.k
        w_idx, c_idx = np.nonzero(want)
        keep = ~np.isin(w_idx, list(self.silent)) if self.silent else slice(None)
        w_idx, c_idx = w_idx[keep], c_idx[keep]
        arrivals, ingress = [], []
        for w in range(p):  # per link: one vectorised transmit call
            mine = np.flatnonzero(w_idx == w)
            got = mine[self.up[w].transmit(len(mine))]
            arrivals.append(got)
            ingress.append(np.full(len(got), w, dtype=np.int32))
        order = np.concatenate(arrivals)
        n = len(order)
        stats.packets_up += len(w_idx)
        h = {
            "job": np.full(n, self.job, np.int32),
            "worker": w_idx[order].astype(np.int32),
            "shadow": np.full(n, shadow, np.int32),
            "slot": c_idx[order].astype(np.int32),
            "flags": np.full(n, (flag("PHASE") if preamble else 0)
                             | (flag("RETRANSMIT") if retransmit else 0), np.int32),
            "exponent": e_next[w_idx[order], c_idx[order]].astype(np.int32),
            "count": np.full(n, k, np.int32),
        }
        if preamble:  # value-free packets: every payload is the same zero row
            source, rows = np.zeros((1, k), np.int32), np.zeros(n, np.int64)
        else:  # payloads stay where the quantiser wrote them; the switch reads in place
            m = Q.shape[1]
            source = Q.reshape(-1, k)
            rows = w_idx[order].astype(np.int64) * m + c_idx[order]
        res = self.switch.process_native(h, source, np.concatenate(ingress), rows)
        # down: multicast records go to every worker through its own link
        delivered = []
        for w in range(p):
            records = np.flatnonzero((res.kind == MULTICAST) | (res.worker == w))
            arrived = records[self.down[w].transmit(len(records))]
            stats.results_lost += len(records) - len(np.unique(arrived))
            delivered.append(arrived)
            stats.packets_down += len(records)
        return res, delivered

    def _window(self, Q, e_next, window, n_chunks, preamble, stats):
        """Run rounds until every live worker has every result of the window, or until
        the retries run out. Returns (values (n_chunks, k), exponent, overflow, done)."""
        p, k = self.p, self.k
        shadow = 1 if preamble else window % 2  # preamble, then sets 0, 1, 0, …
        want = np.ones((p, n_chunks), dtype=bool)
        result = np.zeros((n_chunks, k), np.int32)
        exp = np.zeros(n_chunks, np.int32)
        ovf = np.zeros(n_chunks, bool)
        have = np.zeros(n_chunks, bool)
        live = np.array([w not in self.silent for w in range(p)])
        for attempt in range(self.max_retries + 1):
            if attempt:
                stats.retransmissions += int(want[live].sum())
            res, delivered = self._round(Q, e_next, want, shadow, preamble, attempt > 0, stats)
            stats.rounds += 1
            for w in range(p):
                recs = delivered[w]
                slots = res.slot[recs]
                slots, first = np.unique(slots, return_index=True)
                recs = recs[first]
                fresh = want[w, slots]
                stats.duplicate_results += len(delivered[w]) - int(fresh.sum())  # dropped
                recs, slots = recs[fresh], slots[fresh]
                want[w, slots] = False
                new = ~have[slots]
                result[slots[new]] = res.values[recs[new]]
                exp[slots[new]] = res.exponent[recs[new]]
                ovf[slots[new]] = res.overflow[recs[new]] != 0
                have[slots[new]] = True
            if not want[live].any():
                break
        done = ~want[live].any(axis=0) & have
        if not done.all():  # control plane: free the stuck slots before the set is reused
            self.switch.clear_set(shadow)
        return result, exp, ovf, done

    # -- the whole vector ----------------------------------------------------------------
    def allreduce(self, X: np.ndarray) -> tuple[np.ndarray, AllreduceStats]:
        """Σ_i X[i] (float64 (n,)) aggregated in the switch, with fallbacks."""
        X = np.asarray(X, dtype=np.float32)
        p, n = X.shape
        if p != self.p:
            raise ValueError(f"expected {self.p} rows, got {p}")
        k, stats = self.k, AllreduceStats()
        C = -(-n // k)
        out = np.zeros(C * k, dtype=np.float64)
        fallback = np.zeros(C, dtype=bool)
        if self.switch is None:
            stats.fallback_chunks["no_slots"] = C
            out[:n] = X.sum(axis=0, dtype=np.float64)
            return out[:n], stats
        P = min(self.pool_size, C)  # chunks per window: a short vector uses fewer slots
        windows = -(-C // P)
        e_pad = np.full((p, (windows + 1) * P), EXP_MIN, np.int32)
        e_pad[:, :C] = chunk_exponents(X, k)
        # preamble: agree on window 0's exponents (value-free packets, PHASE flag)
        _, agreed, _, done = self._window(None, e_pad[:, :P], 0, P, True, stats)
        agreed = np.where(done, agreed, e_pad[:, :P].max(axis=0))
        for b in range(windows):
            lo, hi = b * P, (b + 1) * P
            real = min(hi, C) - lo  # chunks of this window inside the vector
            f = scale_of(agreed, p)
            Qwin = quantize_chunks(X, lo, f, k)  # (p, P, k); honest |q| ≤ INT32_MAX/p
            result, next_e, ovf, done = self.reduce_window(Qwin, e_pad[:, hi:hi + P], b, stats)
            sums = result[:real].astype(np.float64) / f[:real, None]
            out[lo * k:(lo + real) * k] = sums.reshape(-1)
            stats.fallback_chunks["overflow"] += int((ovf & done)[:real].sum())
            stats.fallback_chunks["silent_worker"] += int((~done)[:real].sum())
            fallback[lo:lo + real] = (ovf | ~done)[:real]
            agreed = np.where(done, next_e, e_pad[:, hi:hi + P].max(axis=0))
        if fallback.any():  # ATP-like: the PS sums the affected chunks in float
            cols = (np.flatnonzero(fallback)[:, None] * k + np.arange(k)).reshape(-1)
            cols = cols[cols < n]
            out[cols] = X[:, cols].sum(axis=0, dtype=np.float64)
        stats.switch_drops = self.switch.drop_counts()
        self.step += 1
        return out[:n], stats

    def reduce_window(self, Q: np.ndarray, e_next: np.ndarray, window: int,
                      stats: AllreduceStats | None = None):
        """Integer-sum one window: Q (p, m, k) int32 for slots 0..m−1 (m ≤ pool_size)
        and the exponents each worker proposes for the next window (p, m). Returns
        (sums (m, k) int32, agreed next exponents, overflow flags, done flags)."""
        stats = stats if stats is not None else AllreduceStats()
        if (Q.ndim != 3 or Q.shape[0] != self.p or Q.shape[2] != self.k
                or not 1 <= Q.shape[1] <= self.pool_size or e_next.shape != Q.shape[:2]):
            raise ValueError(
                f"reduce_window: Q must be (p={self.p}, m <= {self.pool_size}, k={self.k}) and "
                f"e_next (p, m); got {Q.shape} and {e_next.shape}")
        if self.tamper is not None:
            Q = self.tamper(Q.copy(), window)
        return self._window(Q, e_next, window, Q.shape[1], False, stats)
