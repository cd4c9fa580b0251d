"""The ``csr_sparse`` transform: linear layers with an unstructured sparse weight -> the CSR op.

Every ``nn.Linear`` of an ``nn.Sequential`` (the head aside, as for ``block_sparse``) whose weight
has at most ``MAX_CSR_DENSITY`` of its entries nonzero and no block structure becomes a
:class:`~compilers.ops.csr.CSRLinear`, fused with a ReLU right after it, which the TVM backend
lowers to the CSR kernel (``compilers.tvm.kernels.csr``). "No block structure": the block shape
``block_sparse`` would pick stores at least ``MIN_FILL`` times as many entries as there are
nonzeros (more than half of the BSR kernel's multiplies would be by zero), or there is none. It
runs before ``block_sparse`` (order 15), which then keeps the layers with real blocks: a 10%
unstructured 2000x2000 weight qualifies for 4x1 blocks (34% of blocks kept) but ran 0.22 ms /
5.7 ms there against 0.19 ms / 1.6 ms in the CSR kernel at batch 1 / 64 (docs/compilers.md).
n:m patterns keep half or more of the weights (2:4), above ``MAX_CSR_DENSITY``: they stay dense.
Convolutions and int8 are not covered: the ``int8`` transform leaves CSR layers fp32.
"""

from __future__ import annotations

import torch
from torch import nn

from ..ops.csr import CSRLinear
from ._base import Transform, TransformContext, register_transform
from ._block_sparse import block_density, choose_block_shape, replace_layers

__all__ = ["MAX_CSR_DENSITY", "MIN_FILL", "CSRSparseTransform", "is_unstructured",
           "to_csr_sparse"]

# At most this fraction of nonzeros: the CSR kernel beat dense torch by 1.6-4.9x at 10% density
# (docs/compilers.md); it reads an int32 index per value, so near 50% dense wins.
MAX_CSR_DENSITY = 0.25
MIN_FILL = 2.0  # stored block entries / nonzeros above which a layer is "unstructured"


def is_unstructured(weight: torch.Tensor) -> bool:
    """At most ``MAX_CSR_DENSITY`` nonzeros and no block shape that stores them efficiently."""
    w = weight.detach().cpu().numpy()
    nnz = int((w != 0).sum())
    if nnz == 0 or nnz > MAX_CSR_DENSITY * w.size:
        return False
    shape = choose_block_shape(w)
    if shape is None:
        return True
    bh, bw = shape
    stored = block_density(w, bh, bw) * w.size  # entries of the kept blocks
    return stored >= MIN_FILL * nnz


def to_csr_sparse(module: nn.Module, *, keep_head_dense: bool = True) -> nn.Module:
    """Replace unstructured sparse ``nn.Linear`` layers (and a ReLU right after) by CSRLinear."""
    def make(layer: nn.Module, relu: bool) -> nn.Module | None:
        if type(layer) is nn.Linear and is_unstructured(layer.weight):
            return CSRLinear(layer, relu=relu)
        return None

    return replace_layers(module, make, keep_head_dense=keep_head_dense)


class CSRSparseTransform(Transform):
    """Unstructured sparse linears -> the CSR kernel op; the reference form keeps them dense."""

    name = "csr_sparse"
    order = 15  # after shrink, before block_sparse (which keeps the block-structured layers)

    def apply(self, module: nn.Module, context: TransformContext) -> nn.Module:
        return to_csr_sparse(module) if context.kernels else module


register_transform(CSRSparseTransform)
