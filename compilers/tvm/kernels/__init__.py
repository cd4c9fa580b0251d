"""Hand-written TIR kernels: block-sparse linear (``bsr``), direct block-sparse conv
(``bsr_conv``), CSR linear (``csr``), int8 linear (``int8``)."""

from __future__ import annotations

from .bsr import BSRWeight, bsr_linear_kernel, kernel_tiling, pack_bsr
from .bsr_conv import bsr_conv2d_kernel
from .int8 import VECTORS, Int8Weight, int8_linear_kernel, pack_int8

__all__ = [
    "BSRWeight", "Int8Weight", "VECTORS", "bsr_conv2d_kernel", "bsr_linear_kernel",
    "int8_linear_kernel", "kernel_tiling", "pack_bsr", "pack_int8",
]
