"""Programs of the two-phase FA offload (host.fa_offload).

``sketch_store(p, k_prime, k)``: phase 1. Worker i sends its b-bit CountSketch of
k′ values in k′/k packets of k values; packet (i, j) writes lanes
[j·k, (j+1)·k) of worker i's row: a register of p·k′/k entries × k lanes, indexed
by i·(k′/k) + j. A per-(worker, packet) bitmap makes retransmissions idempotent (a
write, not an add), and a counter tells the control plane when all p·k′/k packets
are in; it then reads the registers (control-plane register reads) and forms the
sketched Gram matrix.

``phase2_guard(p, k, buckets)``: the defences of phase 2, in front of the streaming
sum: a per-worker bound (lane-wise saturating min/max against ±B_i, written by the
control plane per step) with a clamp counter, and the secret checksum: per worker,
one accumulator per block exponent (so values of different scales are never mixed;
the control plane divides by each scale afterwards) and per lane, adding ±v or 0
per lane as a control-plane table keyed by the packet's chunk says (additions and
subtractions only; the table holds the secret ρ·σ codes for the step).
"""

from __future__ import annotations

from p4_models.program import Program, Register, RegisterAction, Stage
from p4_models.switchml_sum import ETH_IP_UDP_BYTES, HEADER_BYTES

EXPONENTS = 254  # the int8 exponent field's normal range, one accumulator each


def sketch_store(p: int = 15, k_prime: int = 4096, k: int = 64) -> Program:
    if p < 1 or k < 1 or k_prime < k or k_prime % k:
        raise ValueError(f"need p >= 1 and k′ a multiple of k (got p={p}, k′={k_prime}, k={k})")
    rows = p * (k_prime // k)
    stages = (
        Stage("PacketBitmap", (Register("seen", 8, rows),),
              (RegisterAction("test_and_set", "seen", ("or", "read")),)),
        Stage("PacketsIn", (Register("packets_in", 32, 1),),
              (RegisterAction("count_new", "packets_in", ("add", "read")),)),
        Stage("SketchStore", (Register("sketch", 32, rows, lanes=k),),
              (RegisterAction("store_lane", "sketch", ("write",)),)),
    )
    return Program(
        name=f"sketch_store(p={p}, k′={k_prime}, k={k})",
        stages=stages,
        parsed_bytes=ETH_IP_UDP_BYTES + HEADER_BYTES + 4 * k,
        decision_table={(0,): "store_and_count", (1,): "drop_duplicate"},
        decision_keys=("seen",),
    )


def phase2_guard(p: int = 15, k: int = 64) -> Program:
    if p < 1 or k < 1:
        raise ValueError(f"need p >= 1 and k >= 1 (got p={p}, k={k})")
    stages = (
        Stage("Bound", (Register("bound", 32, p),),
              (RegisterAction("clamp", "bound", ("read", "min", "max")),)),
        Stage("ClampCounter", (Register("clamped", 32, p),),
              (RegisterAction("count_clamps", "clamped", ("add",)),)),
        # one accumulator per (worker, exponent) and lane: a stateful ALU cannot sum
        # across lanes, so the control plane adds the k lanes when it reads them
        Stage("Checksum", (Register("checksum", 32, p * EXPONENTS, lanes=k),),
              (RegisterAction("signed_accumulate", "checksum", ("add", "sub")),)),
    )
    return Program(
        name=f"phase2_guard(p={p}, k={k})",
        stages=stages,
        parsed_bytes=ETH_IP_UDP_BYTES + HEADER_BYTES + 4 * k,
        decision_table={(0,): "clamp_and_checksum", (1,): "clamp_and_checksum"},
        decision_keys=("retransmit",),
    )
