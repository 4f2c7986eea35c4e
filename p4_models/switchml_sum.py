"""Streaming integer sum with SwitchML semantics (REFERENCE §4.1).

Controls, in pipeline order, each owning its registers:

* ``UseCheck`` — per slot and shadow set, the 64-bit key (step, packet_id) of the use
  in progress. A packet with an older key (a late copy or a replay of an earlier use)
  is dropped, counted as stale; one with a newer key starts that use afresh: its set's
  bitmap and counter are taken as empty. (A later use of a set is only ever sent after
  the earlier use completed, so a newer key never cuts a real use short: it ends one
  that a stale packet started.)
* ``UpdateAndCheckWorkerBitmap`` — one 64-bit entry per pool index holding the 32-bit
  worker bitmaps of both shadow sets: set my bit in this set, report whether it was
  already set (a retransmission), and clear it in the other set when this packet's
  use is later than the other set's (the same packet sent to the other set — a worker
  toggling its shadow bit — must not clear it, or its next copy would count twice).
* ``WorkersCounter`` — contributions received for the slot (0 … p). A packet of a use
  that is already complete counts as seen whatever its bit says (a later use in the
  other set may have cleared it): it is a copy, answered with the kept result, and can
  never reopen the use with a second contribution from the same worker.
* ``Exponents`` — max of the block exponents the workers propose for the next block.
* ``OverflowFlag`` — sticky "a saturating add clipped" bit per slot.
* ``Processor`` — k int32 lanes per slot, saturating add (first contribution writes).

The per-packet decision is the const-entries table below, keyed on
(seen, in_progress, last): ``seen`` my bit is already set in this set; ``in_progress``
0 < counter < p; ``last`` this contribution makes the counter reach p.
"""

from __future__ import annotations

from innet import protocol
from p4_models.program import Program, Register, RegisterAction, Stage

# action codes shared with the emulator's kernel
DROP_DUPLICATE, UNICAST_RESULT, WRITE_FIRST, WRITE_FIRST_AND_MULTICAST, ADD, ADD_AND_MULTICAST = (
    range(6)
)
ACTION_NAMES = (
    "drop_duplicate",
    "unicast_kept_result",
    "write_first",
    "write_first_and_multicast",
    "saturating_add",
    "saturating_add_and_multicast",
)

#: (seen, in_progress, last) → action  — the one place where "last packet" is decided
DECISION_TABLE = {
    (1, 0, 0): UNICAST_RESULT,  # retransmission to a finished slot: resend the kept result
    (1, 0, 1): UNICAST_RESULT,
    (1, 1, 0): DROP_DUPLICATE,  # retransmission while the slot still fills: already counted
    (1, 1, 1): DROP_DUPLICATE,
    (0, 0, 0): WRITE_FIRST,  # first contribution of a new round
    (0, 0, 1): WRITE_FIRST_AND_MULTICAST,  # p = 1
    (0, 1, 0): ADD,
    (0, 1, 1): ADD_AND_MULTICAST,  # the last contribution completes the slot
}

ETH_IP_UDP_BYTES = 14 + 20 + 8
HEADER_BYTES = protocol.HEADER_BYTES  # declared once, in innet.protocol.header.FIELDS


def streaming_sum(k: int = 64, pool_size: int = 512) -> Program:
    """The streaming-sum program for packets of k int32 values and ``pool_size`` slots
    per shadow set."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if pool_size < 1:
        raise ValueError(f"pool_size must be >= 1, got {pool_size}")
    slots = 2 * pool_size
    stages = (
        Stage("UseCheck", (Register("use", 64, slots, signed=True),),
              (RegisterAction("compare_and_advance", "use", ("compare", "write", "read")),)),
        Stage("UpdateAndCheckWorkerBitmap", (Register("bitmap", 64, pool_size),),
              (RegisterAction("set_mine_clear_other", "bitmap", ("or", "andnot", "read")),)),
        Stage("WorkersCounter", (Register("counter", 32, slots, signed=True),),
              (RegisterAction("count", "counter", ("add", "compare", "write")),)),
        Stage("Exponents", (Register("exponent", 8, slots, signed=True),),
              (RegisterAction("max_exponent", "exponent", ("max", "write", "read")),)),
        Stage("OverflowFlag", (Register("overflow", 8, slots),),
              (RegisterAction("sticky_or", "overflow", ("or", "write", "read")),)),
        Stage("Processor", (Register("values", 32, slots, lanes=k, signed=True),),
              (RegisterAction("sat_accumulate", "values", ("sat_add", "write", "read")),)),
    )
    return Program(
        name=f"streaming_sum(k={k}, pool={pool_size})",
        stages=stages,
        parsed_bytes=ETH_IP_UDP_BYTES + HEADER_BYTES + 4 * k,
        decision_table={key: ACTION_NAMES[a] for key, a in DECISION_TABLE.items()},
        decision_keys=("seen", "in_progress", "last"),
    )
