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
* ``Exponents`` — max of the block exponents the workers propose for the next block,
  each capped at the control plane's bound for the job (``exponent_cap``).
* ``OverflowFlag`` — sticky "a saturating add clipped" bit per slot.
* ``Processor`` — k int32 lanes per slot, saturating add (first contribution writes).

The per-packet decision is the const-entries table below, keyed on
(seen, in_progress, last): ``seen`` my bit is already set in this set; ``in_progress``
0 < counter < p; ``last`` this contribution makes the counter reach p.

Each stage's register action is a Numba function below its declaration;
:func:`emulator.switch.switch_packet` composes them, in this order, into the
compiled per-packet function.
"""

from __future__ import annotations

import numba
import numpy as np

from innet import protocol
from innet.memory import copy_row
from p4_models import alu
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


# -- the stages' register actions (the emulator composes them: emulator.switch) ---------


@numba.njit(cache=True, inline="always")
def use_check(use_reg, s, v, use):
    """UseCheck.compare_and_advance: returns (stale, newer). A packet of an earlier use
    of this slot set (a late or replayed copy) is stale; one of a later use advances
    the key and starts that use afresh (the set is then either finished or holds a
    use started by such a stale packet). ``use_reg`` is the register viewed flat: set v
    of slot s at 2s + v, both sets' keys of a slot side by side on one cache line (a
    flat index keeps a stride out of the lane loop, which runs short of registers)."""
    current = use_reg[2 * s + v]
    if use < current:
        return True, False
    newer = use > current
    if newer:
        use_reg[2 * s + v] = use
    return False, newer


@numba.njit(cache=True, inline="always")
def set_mine_clear_other(bitmap, use_reg, s, v, w, use, newer):
    """UpdateAndCheckWorkerBitmap.set_mine_clear_other on the slot's 64-bit entry (set
    v in bits [32v, 32v+32)): returns ``seen``, whether my bit was already set."""
    mine = np.uint64(1) << np.uint64(32 * v + w)
    theirs = np.uint64(1) << np.uint64(32 * (1 - v) + w)
    entry = bitmap[s]
    if newer:  # the bits of set v belong to the use before: forget them
        entry &= ~(np.uint64(0xFFFFFFFF) << np.uint64(32 * v))
    seen = 1 if (entry & mine) != 0 else 0
    entry |= mine
    # SwitchML clears my bit in the other set: that set's use is over for me. Only a
    # packet of a later use than the other set's may say so; the same packet sent to
    # the other set (a worker toggling its shadow bit) must not, or its next copy to
    # this set would count again
    if use > use_reg[2 * s + 1 - v]:  # (use_reg flat, as in use_check)
        entry &= ~theirs
    bitmap[s] = entry
    return seen


@numba.njit(cache=True, inline="always")
def count(counter, idx, newer, p, seen):
    """WorkersCounter.count, read side: the decision keys (seen, in_progress, last) and
    the count so far. A packet of a complete use is a copy whatever its bit says (a
    later use in the other set may have cleared it): it is answered with the kept
    result and can never reopen the use with a second contribution."""
    c = 0 if newer else counter[idx]
    if c >= p:
        seen = 1
    in_progress = 1 if (c > 0 and c < p) else 0
    last = 1 if ((c + 1 == p) if in_progress == 1 else (p == 1)) else 0
    return c, seen, in_progress, last


@numba.njit(cache=True, inline="always")
def max_exponent(exp_reg, idx, exponent, cap, first):
    """Exponents.max_exponent: the first contribution writes, later ones keep the max;
    a proposal above the control plane's cap is taken as the cap (a worker cannot
    blow up the next block's scale past what the step's values can need)."""
    e = min(exponent, cap)
    if first or e > exp_reg[idx]:
        exp_reg[idx] = e


@numba.njit(cache=True, inline="always")
def write_first(regs, idx, source, r, k):
    """Processor, first contribution: the lanes are written (one copy of the row:
    :func:`innet.memory.copy_row`)."""
    copy_row(regs, idx, source, r, k)


@numba.njit(cache=True, inline="always")
def sat_accumulate(regs, idx, source, r, k):
    """Processor.sat_accumulate: regs[idx] += source[r] lane by lane, clamped to int32;
    returns whether any lane clamped (OverflowFlag.sticky_or takes it).

    The lanes stay 32 bits wide (:mod:`p4_models.alu`): each lane's saturating sum, and
    the clip flag as "some saturating sum differs from the wrapping one", a boolean OR
    that LLVM keeps in mask registers — one branch-free loop. (Forming each sum in
    64 bits and clamping it, the earlier form, was ≈ 1.5 % slower end to end; a wrapping
    add with a second clamping loop, slower still.)"""
    dst = regs[idx]
    src = source[r]
    clipped = False
    for j in range(k):
        a = dst[j]
        b = src[j]
        s = alu.sat_add_i32(a, b)
        clipped |= s != alu.wrap_add_i32(a, b)
        dst[j] = s
    return 1 if clipped else 0
