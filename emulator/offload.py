"""The FA offload's switch programs, executed: phase 1's sketch store and phase 2's
guard (:mod:`p4_models.fa_sketch`).

Registers are allocated from the programs' declarations (width, signedness, depth,
lanes); the per-packet kernels compose the stage functions declared beside them and
run compiled over a batch, so no Python runs per packet. Every dropped packet is
counted by reason; nothing a packet carries can raise. The control plane (host side,
:class:`host.fa_offload.OffloadedFA`) writes the guard's per-step state (bounds,
reference exponent, secret tables) and reads registers, as a real controller would.
"""

from __future__ import annotations

import numba
import numpy as np

from p4_models import fa_sketch as fs
from p4_models import phase2_guard, sketch_store

#: registers whose entries are rows of k lanes (even for k = 1)
LANE_REGISTERS = ("sketch", "checksum", "secret")


def _allocate(program) -> dict[str, np.ndarray]:
    """Zeroed registers of a program, each exactly its declared width and signedness;
    a lane register is (depth, lanes)."""
    out = {}
    for stage in program.stages:
        for reg in stage.registers:
            shape = (reg.depth, reg.lanes) if reg.name in LANE_REGISTERS else (reg.depth,)
            out[reg.name] = np.zeros(shape, dtype=reg.dtype)
    return out


# -- phase 1 --------------------------------------------------------------------------
@numba.njit(cache=True)
def _sketch_kernel(p, packets_per_worker, k, port_of_worker, worker, index, count, ingress,
                   values, seen, n_in, sketch, drops):
    for i in range(worker.shape[0]):
        w = worker[i]
        j = index[i]
        if count[i] != k:
            drops[0] += 1
            continue
        if w < 0 or w >= p:
            drops[1] += 1
            continue
        if ingress[i] != port_of_worker[w]:
            drops[2] += 1
            continue
        if j < 0 or j >= packets_per_worker:
            drops[3] += 1
            continue
        row = w * packets_per_worker + j
        if fs.packet_bitmap(seen, row) == 0:  # decision: drop_duplicate
            drops[4] += 1
            continue
        fs.packets_in(n_in)  # decision: store_and_count
        fs.store_lanes(sketch, row, values[i])


class SketchSwitch:
    """Phase 1 on a switch running :func:`p4_models.sketch_store`: worker w's sketch
    arrives as k′/k packets of k values (header fields ``worker``, ``packet_id`` = the
    packet's index j, ``count``); a retransmission is a no-op (counted)."""

    def __init__(self, p: int, k_prime: int, k: int = 64,
                 port_of_worker: np.ndarray | None = None):
        self.program = sketch_store(p, k_prime, k)
        self.p, self.k_prime, self.k = p, k_prime, k
        self.per_worker = k_prime // k
        self.port_of_worker = (np.arange(p, dtype=np.int32) if port_of_worker is None
                               else np.asarray(port_of_worker, dtype=np.int32))
        self.registers = _allocate(self.program)
        self.drops = np.zeros(len(fs.SKETCH_DROPS), np.int64)

    def clear(self) -> None:
        """Control plane: a new step."""
        for reg in self.registers.values():
            reg[...] = 0

    def process(self, worker, index, values, ingress, count=None) -> None:
        worker = np.ascontiguousarray(worker, np.int64)
        N = len(worker)
        index = np.ascontiguousarray(index, np.int64)
        values = np.ascontiguousarray(values, np.int32).reshape(N, -1)
        count = (np.full(N, values.shape[1], np.int64) if count is None
                 else np.ascontiguousarray(count, np.int64))
        ingress = np.ascontiguousarray(ingress, np.int64)
        if len(index) != N or len(count) != N or len(ingress) != N:
            raise ValueError("batch arrays disagree in length")
        if values.shape[1] != self.k:
            self.drops[0] += N
            return
        r = self.registers
        _sketch_kernel(self.p, self.per_worker, self.k, self.port_of_worker, worker, index,
                       count, ingress, values, r["seen"], r["packets_in"], r["sketch"],
                       self.drops)

    def send_sketches(self, Yq: np.ndarray) -> None:
        """Every worker's packets of its integer sketch Yq (p × k′), each once."""
        p, per = self.p, self.per_worker
        w = np.repeat(np.arange(p), per)
        j = np.tile(np.arange(per), p)
        self.process(w, j, np.asarray(Yq).reshape(p * per, self.k), self.port_of_worker[w])

    # control-plane reads
    @property
    def complete(self) -> bool:
        return int(self.registers["packets_in"][0]) == self.p * self.per_worker

    def read(self) -> np.ndarray:
        """The stored sketches, (p, k′) int64."""
        return self.registers["sketch"].reshape(self.p, self.k_prime).astype(np.int64)

    def drop_counts(self) -> dict[str, int]:
        return dict(zip(fs.SKETCH_DROPS, self.drops.tolist()))


# -- phase 2 --------------------------------------------------------------------------
@numba.njit(cache=True, parallel=True)
def _guard_kernel(p, chunks, secret_buckets, e_ref, Q, first_chunk, exponents, bound,
                  clamped, checksum, secret, codes, bucket_of, signs, drops_w):
    """Worker w's packets of chunks first_chunk … first_chunk + m − 1 (Q (p, m, k),
    block exponents ``exponents`` (m,)): clamp in place, then the public checksum and
    the secret sketch. Each packet comes here once, as its first copy (the decision
    ``first`` of the declaration; copies would only be clamped). Workers own disjoint
    registers, so they run in parallel."""
    m = Q.shape[1]
    for w in numba.prange(p):
        for c in range(m):
            chunk = first_chunk + c
            if chunk < 0 or chunk >= chunks:
                drops_w[w, 3] += 1
                continue
            shift = e_ref - exponents[c]
            vals = Q[w, c]
            clamped[w] += fs.bound_clamp(bound, w, shift, vals)
            fs.checksum_accumulate(checksum, w, codes[chunk], shift, vals)
            fs.secret_accumulate(secret, w * secret_buckets + bucket_of[chunk], signs[chunk],
                                 shift, vals)


class GuardSwitch:
    """Phase 2's guard (:func:`p4_models.phase2_guard`) for p workers and packets of
    k lanes, a secret sketch of ``secret_buckets``·k buckets per worker, and steps of
    up to ``chunks`` chunks (the control-plane tables' size: the public check's codes
    and the secret sketch's bucket and signs per chunk). Per step the control plane
    calls :meth:`arm`; the guard then
    runs on every window's packets (:meth:`__call__`, the ``guard`` hook of
    :class:`host.switch_allreduce.SwitchAllreduce`) before the streaming sum adds
    them, so the checks see exactly the integers that are summed."""

    def __init__(self, p: int, k: int = 64, chunks: int = 16384, secret_buckets: int = 64):
        self.program = phase2_guard(p, k, secret_buckets)
        self.p, self.k, self.chunks, self.secret_buckets = p, k, chunks, secret_buckets
        self.registers = _allocate(self.program)
        self.drops = np.zeros((p, len(fs.GUARD_DROPS)), np.int64)
        self.e_ref = 0
        self._tables = None

    def arm(self, bound: np.ndarray, e_ref: int, codes: np.ndarray, bucket_of: np.ndarray,
            signs: np.ndarray) -> None:
        """Control plane, once per step: clear the registers; write each worker's bound
        in the reference scale (int32), the reference exponent, the public-check codes
        per (chunk, lane) in {−1, 0, 1}, and the secret sketch's bucket per chunk and
        sign per (chunk, lane)."""
        for reg in self.registers.values():
            reg[...] = 0
        self.registers["bound"][:] = np.asarray(bound)
        self.e_ref = int(e_ref)
        C = len(bucket_of)
        if C > self.chunks or codes.shape != (C, self.k) or signs.shape != (C, self.k):
            raise ValueError(f"guard tables: need at most {self.chunks} chunks of {self.k} "
                             f"lanes, got {codes.shape}, {signs.shape}, {len(bucket_of)}")
        full = np.zeros((self.chunks, self.k), np.int8)
        full[:C] = codes
        sg = np.ones((self.chunks, self.k), np.int8)
        sg[:C] = signs
        bk = np.zeros(self.chunks, np.int64)
        bk[:C] = bucket_of
        self._tables = (full, bk, sg)

    def __call__(self, Q: np.ndarray, first_chunk: int, exponents: np.ndarray) -> np.ndarray:
        """Run the guard on one window's packets Q (p, m, k) int32 of block exponents
        ``exponents`` (m,); returns Q clamped (in place)."""
        if self._tables is None:
            raise RuntimeError("the guard is not armed for this step")
        Q = np.ascontiguousarray(Q, np.int32)
        r = self.registers
        codes, bucket_of, signs = self._tables
        _guard_kernel(self.p, self.chunks, self.secret_buckets, self.e_ref, Q, int(first_chunk),
                      np.ascontiguousarray(exponents, np.int64), r["bound"], r["clamped"],
                      r["checksum"], r["secret"], codes, bucket_of, signs,
                      self.drops)
        return Q

    # control-plane reads
    def read(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(public checksum per worker (p,) int64 summed over lanes, the secret
        sketches (p, secret_buckets·k) int64, clamped lanes per worker (p,)), all in the
        reference scale."""
        r = self.registers
        return (r["checksum"].sum(axis=1), r["secret"].reshape(self.p, -1).copy(),
                r["clamped"].astype(np.int64))

    def drop_counts(self) -> dict[str, int]:
        return dict(zip(fs.GUARD_DROPS, self.drops.sum(axis=0).tolist()))
