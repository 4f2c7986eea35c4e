"""Quantisation: block floating point with SwitchML scaling (Numba kernels)."""

from innet.quant.block_float import (
    EXP_MAX,
    EXP_MIN,
    INT32_MAX,
    chunk_exponents,
    quantize_chunks,
    scale_of,
)

__all__ = ["EXP_MAX", "EXP_MIN", "INT32_MAX", "chunk_exponents", "quantize_chunks", "scale_of"]
