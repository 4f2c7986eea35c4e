"""Programs of the two-phase FA offload (host.fa_offload), each stage's register action
beside its declaration. :mod:`emulator.offload` allocates the registers from these
declarations and composes the stage functions into its per-packet kernels.

``sketch_store(p, k_prime, k)``: phase 1. Worker i sends its b-bit CountSketch of
k′ values in k′/k packets of k values; packet (i, j) writes lanes
[j·k, (j+1)·k) of worker i's row: a register of p·k′/k entries × k lanes, indexed
by i·(k′/k) + j. A per-(worker, packet) bitmap makes retransmissions idempotent (a
write, not an add), and a counter tells the control plane when all p·k′/k packets
are in; it then reads the registers (control-plane register reads) and forms the
sketched Gram matrix.

``phase2_guard(p, k, chunks, secret_buckets)``: the defences of phase 2, stages in
front of the streaming sum, on the integers the sum adds. Every value is compared in
one *reference scale*: the control plane picks the exponent e_ref that bounds every
honest value of the step, and a packet of block exponent e is brought to it by a
shift of e_ref − e bits (``shl``/``shr``: no multiply).

* ``Bound`` — per worker, its bound ±B_i in the reference scale (written by the
  control plane per step), shifted to the packet's scale; each lane is clamped to it
  with a saturating min/max, and ``ClampCounter`` counts the clamped lanes.
* ``Checksum`` — the public-sketch check: per worker and lane, the sum of
  ρ_h(j)·σ(j)·v_j in the reference scale, where h and σ are the public CountSketch
  hashes of the coordinate and ρ the step's secret bucket signs (a control-plane
  table, codes in {−1, 0, +1}): additions and subtractions only.
* ``SecretSketch`` — a CountSketch the workers cannot know: per step the control
  plane draws a secret bucket per chunk and a secret sign per (chunk, lane); lane l
  of a packet of chunk c adds ±v into bucket (b(c), l) of its worker's row. The
  control plane reads it and compares the phase-2 vectors' Gram matrix with the one
  phase 1 promised (closes the null space of the public sketch).

The guard sits behind the streaming sum's ``UpdateAndCheckWorkerBitmap`` and keys its
decision on that stage's answer: ``first`` (this worker's bit was clear — not a
retransmission) enters the checks; a copy is only clamped, so nothing is checked twice.
"""

from __future__ import annotations

import numba
import numpy as np

from p4_models.program import Program, Register, RegisterAction, Stage
from p4_models.switchml_sum import ETH_IP_UDP_BYTES, HEADER_BYTES

INT32_MAX, INT32_MIN = 2**31 - 1, -(2**31)
INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)
#: the FA-offload programs' drop reasons (counted per packet, never raised)
SKETCH_DROPS = ("malformed", "worker_out_of_range", "wrong_ingress_port", "index_out_of_range",
                "duplicate")
GUARD_DROPS = ("malformed", "worker_out_of_range", "wrong_ingress_port", "chunk_out_of_range")


# -- sketch_store ---------------------------------------------------------------------
def sketch_store(p: int = 15, k_prime: int = 4096, k: int = 64) -> Program:
    if p < 1 or k < 1 or k_prime < k or k_prime % k:
        raise ValueError(f"need p >= 1 and k′ a multiple of k (got p={p}, k′={k_prime}, k={k})")
    rows = p * (k_prime // k)
    stages = (
        Stage("PacketBitmap", (Register("seen", 8, rows),),
              (RegisterAction("test_and_set", "seen", ("or", "read")),)),
        Stage("PacketsIn", (Register("packets_in", 32, 1),),
              (RegisterAction("count_new", "packets_in", ("add", "read")),)),
        Stage("SketchStore", (Register("sketch", 32, rows, lanes=k, signed=True),),
              (RegisterAction("store_lane", "sketch", ("write",)),)),
    )
    return Program(
        name=f"sketch_store(p={p}, k′={k_prime}, k={k})",
        stages=stages,
        parsed_bytes=ETH_IP_UDP_BYTES + HEADER_BYTES + 4 * k,
        decision_table={(1,): "store_and_count", (0,): "drop_duplicate"},
        decision_keys=("first",),
    )


@numba.njit(cache=True, inline="always")
def packet_bitmap(seen, row):
    """PacketBitmap.test_and_set: 1 if this (worker, packet) is new."""
    first = 1 if seen[row] == 0 else 0
    seen[row] = 1
    return first


@numba.njit(cache=True, inline="always")
def packets_in(count):
    """PacketsIn.count_new."""
    count[0] += 1


@numba.njit(cache=True, inline="always")
def store_lanes(sketch, row, values):
    """SketchStore.store_lane: one write per lane."""
    dst = sketch[row]
    for j in range(dst.shape[0]):
        dst[j] = values[j]


# -- phase2_guard ---------------------------------------------------------------------
def phase2_guard(p: int = 15, k: int = 64, secret_buckets: int = 64) -> Program:
    """Defences of phase 2 for p workers, packets of k lanes and a secret sketch of
    ``secret_buckets`` × k buckets per worker."""
    if p < 1 or k < 1 or secret_buckets < 1:
        raise ValueError(f"need p, k and secret_buckets >= 1 (got p={p}, k={k}, "
                         f"secret_buckets={secret_buckets})")
    stages = (
        Stage("Bound", (Register("bound", 32, p, signed=True),),
              (RegisterAction("clamp", "bound", ("read", "shl", "shr", "min", "max")),)),
        Stage("ClampCounter", (Register("clamped", 32, p),),
              (RegisterAction("count_clamps", "clamped", ("add",)),)),
        # a stateful ALU cannot sum across lanes: one accumulator per (worker, lane);
        # the control plane adds the k lanes when it reads them
        Stage("Checksum", (Register("checksum", 64, p, lanes=k, signed=True),),
              (RegisterAction("signed_accumulate", "checksum", ("shr", "shl", "add", "sub")),)),
        Stage("SecretSketch",
              (Register("secret", 64, p * secret_buckets, lanes=k, signed=True),),
              (RegisterAction("signed_accumulate", "secret", ("shr", "shl", "add", "sub")),)),
    )
    return Program(
        name=f"phase2_guard(p={p}, k={k}, secret={secret_buckets}×{k})",
        stages=stages,
        parsed_bytes=ETH_IP_UDP_BYTES + HEADER_BYTES + 4 * k,
        decision_table={(1,): "clamp_and_check", (0,): "clamp_only"},
        decision_keys=("first",),
    )


@numba.njit(cache=True, inline="always")
def to_reference(q, shift):
    """q of block exponent e in the reference scale e_ref = e + shift (arithmetic
    shift right by ``shift``, or left by −shift; int64)."""
    if shift >= 0:
        return np.int64(q) >> min(shift, 63)
    return np.int64(q) << min(-shift, 31)


@numba.njit(cache=True, inline="always")
def bound_clamp(bound, w, shift, values):
    """Bound.clamp: the worker's bound, written in the reference scale, brought to the
    packet's scale (left by ``shift``, saturating at int32), and every lane clamped to
    ± it; returns how many lanes were clamped (ClampCounter adds them)."""
    b = np.int64(bound[w])
    if shift >= 0:
        b = INT32_MAX if shift >= 31 or b > (INT32_MAX >> shift) else b << shift
    else:
        b = b >> min(-shift, 63)
    clamped = 0
    for j in range(values.shape[0]):
        v = values[j]
        if v > b:
            values[j] = b
            clamped += 1
        elif v < -b:
            values[j] = -b
            clamped += 1
    return clamped


@numba.njit(cache=True, inline="always")
def _sat_add64(a, b):
    t = a + b  # wraps; saturate where it did
    if (a ^ t) & (b ^ t) < 0:
        return INT64_MAX if b > 0 else INT64_MIN
    return t


@numba.njit(cache=True, inline="always")
def checksum_accumulate(checksum, w, codes, shift, values):
    """Checksum.signed_accumulate: lane j adds codes[j]·v_j (codes in {−1, 0, 1}: an
    add, a subtract or nothing) in the reference scale."""
    acc = checksum[w]
    for j in range(values.shape[0]):
        c = codes[j]
        if c != 0:
            v = to_reference(values[j], shift)
            acc[j] = _sat_add64(acc[j], v if c > 0 else -v)


@numba.njit(cache=True, inline="always")
def secret_accumulate(secret, row, signs, shift, values):
    """SecretSketch.signed_accumulate: lane j adds signs[j]·v_j to bucket (row, j)."""
    acc = secret[row]
    for j in range(values.shape[0]):
        v = to_reference(values[j], shift)
        acc[j] = _sat_add64(acc[j], v if signs[j] > 0 else -v)
