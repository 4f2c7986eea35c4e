"""32-bit integer lane operations for the compiled kernels.

Numba types an operation on two int32 values as int64 (it widens small integers to
the machine word), so a loop over int32 data written with Python operators runs in
64-bit vector lanes: half as many values per instruction, plus the widening and
narrowing. These intrinsics keep the lanes 32 bits wide. (The switch's stateful-ALU
operations, the saturating add among them, are in :mod:`p4_models.alu`.)
"""

from __future__ import annotations

from numba import types
from numba.extending import intrinsic


@intrinsic
def and_i32(typingctx, a, b):
    """a & b (int32 operands), an int32."""
    if a != types.int32 or b != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.and_(args[0], args[1])

    return types.int32(types.int32, types.int32), codegen


@intrinsic
def max_i32(typingctx, a, b):
    """max(a, b) (int32 operands, signed), an int32: LLVM's smax pattern."""
    if a != types.int32 or b != types.int32:
        return None

    def codegen(context, builder, signature, args):
        x, y = args
        return builder.select(builder.icmp_signed(">", x, y), x, y)

    return types.int32(types.int32, types.int32), codegen
