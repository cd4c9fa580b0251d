"""The built-in transforms ``shrink``, ``block_sparse`` and ``int8``, registered on import.

The rule that couples them lives here: shrink keeps the shapes of layers that will be block-sparse
(``keep_blocks``) exactly when ``block_sparse`` is in the same application.
"""

from __future__ import annotations

from torch import nn

from ._base import Transform, TransformContext, register_transform
from ._block_sparse import to_block_sparse
from ._int8 import dequantize_int8, to_int8
from ._shrink import shrink

__all__ = ["BlockSparseTransform", "Int8Transform", "ShrinkTransform"]


class ShrinkTransform(Transform):
    """Remove all-zero output units and their consumers' inputs (same form in both modes)."""

    name = "shrink"
    order = 10

    def apply(self, module: nn.Module, context: TransformContext) -> nn.Module:
        return shrink(module, keep_blocks="block_sparse" in context.names)


class BlockSparseTransform(Transform):
    """Block-sparse layers -> BSR kernel ops; the reference form keeps them dense (exact)."""

    name = "block_sparse"
    order = 20

    def apply(self, module: nn.Module, context: TransformContext) -> nn.Module:
        return to_block_sparse(module) if context.kernels else module


class Int8Transform(Transform):
    """Weight-only int8 linears; the reference form holds the dequantized fp32 weights."""

    name = "int8"
    order = 30
    changes_numerics = True

    def apply(self, module: nn.Module, context: TransformContext) -> nn.Module:
        return to_int8(module) if context.kernels else dequantize_int8(module)


for _cls in (ShrinkTransform, BlockSparseTransform, Int8Transform):
    register_transform(_cls)
