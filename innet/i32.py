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


def binary_i32(name: str, build, doc: str):
    """An intrinsic (int32, int32) -> int32 whose body is ``build(builder, a, b)``
    (llvmlite IR); the one place the int32 intrinsics are typed."""

    def typer(typingctx, a, b):
        if a != types.int32 or b != types.int32:
            return None

        def codegen(context, builder, signature, args):
            return build(builder, *args)

        return types.int32(types.int32, types.int32), codegen

    typer.__name__ = typer.__qualname__ = name
    typer.__doc__ = doc
    return intrinsic(typer)


and_i32 = binary_i32("and_i32", lambda b, x, y: b.and_(x, y), "a & b (int32 operands), an int32.")
max_i32 = binary_i32("max_i32", lambda b, x, y: b.select(b.icmp_signed(">", x, y), x, y),
                     "max(a, b) (int32 operands, signed), an int32: LLVM's smax pattern.")
wrap_add_i32 = binary_i32("wrap_add_i32", lambda b, x, y: b.add(x, y),
                          "a + b modulo 2³² (int32 operands): the sum when nothing clamps.")
