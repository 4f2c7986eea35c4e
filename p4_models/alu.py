"""32-bit stateful-ALU operations for the compiled register actions.

Numba widens int32 arithmetic to int64, so a saturating add written with Python
operators becomes sign-extend, 64-bit add, clamp and narrow: twice the vector lanes'
work. These intrinsics keep the lanes 32 bits wide, as the switch's ALUs are, and let
LLVM vectorise them (``llvm.sadd.sat`` is the ALU's ``sat_add``).
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_I32 = ir.IntType(32)


@intrinsic
def sat_add_i32(typingctx, a, b):
    """a + b clamped to [−2³¹, 2³¹ − 1] (int32 operands)."""
    if a != types.int32 or b != types.int32:
        return None

    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_I32, [_I32, _I32]), "llvm.sadd.sat.i32")
        return builder.call(fn, args)

    return types.int32(types.int32, types.int32), codegen


@intrinsic
def wrap_add_i32(typingctx, a, b):
    """a + b modulo 2³² (int32 operands): what the sum is when nothing clamps."""
    if a != types.int32 or b != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.add(args[0], args[1])

    return types.int32(types.int32, types.int32), codegen
