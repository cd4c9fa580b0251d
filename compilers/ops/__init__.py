"""Torch custom ops that carry compiled layers through ``torch.export`` (torch only, no TVM).

``sparse``: ``taskpack::bsr_linear`` / ``taskpack::bsr_conv2d`` and their modules; ``int8``:
``taskpack::int8_linear`` and :class:`Int8Linear`; ``csr``: ``taskpack::csr_linear`` and
:class:`CSRLinear`. In eager mode each op is the dense computation
it stands for, so a rewritten module is numerically the module it came from.
"""

from __future__ import annotations

from .csr import CSR_OP_NAME, CSRLinear
from .int8 import INT8_OP_NAME, Int8Linear, dequantize_weight, quantize_weight
from .sparse import (
    CONV_OP_NAME,
    OP_NAME,
    BlockSparseConv2d,
    BlockSparseLinear,
    conv_output_hw,
    conv_qualifies,
)

__all__ = [
    "CONV_OP_NAME", "CSR_OP_NAME", "INT8_OP_NAME", "OP_NAME", "BlockSparseConv2d",
    "BlockSparseLinear", "CSRLinear",
    "Int8Linear", "conv_output_hw", "conv_qualifies", "dequantize_weight", "quantize_weight",
]
