"""The ``block_sparse`` transform: block-sparse linear / conv layers -> the kernel ops.

:func:`to_block_sparse` swaps linear and conv layers whose weights follow a block pattern for
:class:`~compilers.ops.BlockSparseLinear` / :class:`~compilers.ops.BlockSparseConv2d`, which the
TVM backend lowers to TIR kernels (a direct block-sparse conv kernel for convs).
:func:`parse_block_pattern` is the one parser of ``"block(h,w)"`` pattern strings in
``compilers``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..ops.sparse import BlockSparseConv2d, BlockSparseLinear, conv_qualifies

__all__ = [
    "BLOCK_SHAPES", "MAX_BLOCK_DENSITY", "block_density", "choose_block_shape",
    "to_block_sparse",
]

# Block shapes the kernel runs fast, best first: the kernel vectorizes along a block's rows
# (output units), so tall blocks (16x1, 8x1) fill a SIMD register; 1x16 would not
# (docs/compilers.md).
BLOCK_SHAPES: tuple[tuple[int, int], ...] = ((16, 1), (8, 1), (4, 4), (4, 1))
# A block-sparse layer pays off when at most this fraction of its blocks is kept.
MAX_BLOCK_DENSITY = 0.5


def _flatten(module: nn.Module) -> list[nn.Module] | None:
    if not isinstance(module, nn.Sequential):
        return None
    layers: list[nn.Module] = []
    for child in module:
        if isinstance(child, nn.Sequential):
            inner = _flatten(child)
            assert inner is not None
            layers.extend(inner)
        else:
            layers.append(child)
    return layers


def replace_layers(module: nn.Module, make: Callable[[nn.Module, bool], nn.Module | None], *,
                   keep_head_dense: bool = True) -> nn.Module:
    """``module`` (a Sequential, flattened) with each layer that ``make(layer, relu)`` turns
    into a kernel op replaced by it; ``relu`` says a ReLU follows, which the op then fuses (the
    ReLU is dropped). ``make`` returns None to keep a layer as it is (a copy). The head (the
    last Linear) is kept dense by default: it is small and owned by one task. A module that is
    not a Sequential is returned unchanged."""
    layers = _flatten(module)
    if layers is None:
        return module
    linear_idx = [i for i, m in enumerate(layers) if isinstance(m, nn.Linear)]
    head = linear_idx[-1] if (keep_head_dense and linear_idx) else None
    out: list[nn.Module] = []
    skip_next = False
    for i, layer in enumerate(layers):
        if skip_next:
            skip_next = False
            continue
        relu = i + 1 < len(layers) and isinstance(layers[i + 1], nn.ReLU)
        op = None if i == head else make(layer, relu)
        out.append(copy.deepcopy(layer) if op is None else op)
        skip_next = op is not None and relu
    return nn.Sequential(*out).eval()


def _block_shape(layer: nn.Module) -> tuple[int, int] | None:
    """The block shape ``to_block_sparse`` would give ``layer`` (heads aside), else None."""
    if isinstance(layer, nn.Linear):
        return choose_block_shape(layer.weight)
    if isinstance(layer, nn.Conv2d) and conv_qualifies(layer):
        return choose_block_shape(layer.weight.reshape(layer.weight.shape[0], -1))
    return None


def block_density(weight: np.ndarray, bh: int, bw: int) -> float:
    """Fraction of (bh, bw) blocks of a 2-D weight holding any nonzero."""
    m, k = weight.shape
    blocks = weight.reshape(m // bh, bh, k // bw, bw)
    return float((blocks != 0).any(axis=(1, 3)).mean())


def choose_block_shape(weight: torch.Tensor | np.ndarray) -> tuple[int, int] | None:
    """The fastest block shape that covers the weight's nonzeros sparsely enough, or None.

    Shapes are tried best-kernel first; the first whose kept-block fraction is at most
    ``MAX_BLOCK_DENSITY`` wins (a 16x1-pruned weight is also 8x1-sparse, so order matters).
    """
    w = weight.detach().cpu().numpy() if isinstance(weight, torch.Tensor) else weight
    m, k = w.shape
    for bh, bw in BLOCK_SHAPES:
        if m % bh or k % bw:
            continue
        if block_density(w, bh, bw) <= MAX_BLOCK_DENSITY:
            return bh, bw
    return None


def to_block_sparse(module: nn.Module, *, keep_head_dense: bool = True) -> nn.Module:
    """Replace block-sparse ``nn.Linear`` / ``nn.Conv2d`` layers (and a directly following ReLU)
    by the kernel ops.

    A conv qualifies when it has groups 1 and integer zero padding (any stride / dilation) and its
    weight, viewed as (O, C*kh*kw), is block-sparse; other convs stay dense. The head (last Linear)
    stays dense by default: it is small and owned by one task.
    """
    def make(layer: nn.Module, relu: bool) -> nn.Module | None:
        shape = _block_shape(layer)
        if shape is None:
            return None
        if isinstance(layer, nn.Linear):
            return BlockSparseLinear(layer, *shape, relu=relu)
        assert isinstance(layer, nn.Conv2d)  # _block_shape is None for any other layer
        return BlockSparseConv2d(layer, *shape, relu=relu)

    return replace_layers(module, make, keep_head_dense=keep_head_dense)
