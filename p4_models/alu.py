"""32-bit stateful-ALU operations for the compiled register actions.

Numba widens int32 arithmetic to int64, so a saturating add written with Python
operators becomes sign-extend, 64-bit add, clamp and narrow: twice the vector lanes'
work. These intrinsics keep the lanes 32 bits wide, as the switch's ALUs are, and let
LLVM vectorise them (``llvm.sadd.sat`` is the ALU's ``sat_add``).
"""

from __future__ import annotations

from llvmlite import ir
from numba.core import cgutils

from innet.i32 import binary_i32, wrap_add_i32

_I32 = ir.IntType(32)


def _sat_add(builder, a, b):
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_I32, [_I32, _I32]), "llvm.sadd.sat.i32")
    return builder.call(fn, [a, b])


#: a + b clamped to [−2³¹, 2³¹ − 1] (int32 operands): the ALU's ``sat_add``
sat_add_i32 = binary_i32("sat_add_i32", _sat_add,
                         "a + b clamped to [−2³¹, 2³¹ − 1] (int32 operands).")

__all__ = ["sat_add_i32", "wrap_add_i32"]
