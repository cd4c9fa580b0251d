"""Hand-written TIR kernels: block-sparse linear + im2col (``bsr``), int8 linear (``int8``)."""

from __future__ import annotations

from .bsr import BSRWeight, bsr_linear_kernel, im2col_kernel, kernel_tiling, pack_bsr
from .int8 import VECTORS, Int8Weight, int8_linear_kernel, pack_int8

__all__ = [
    "BSRWeight", "Int8Weight", "VECTORS", "bsr_linear_kernel", "im2col_kernel",
    "int8_linear_kernel", "kernel_tiling", "pack_bsr", "pack_int8",
]
