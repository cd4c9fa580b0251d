"""A torch custom op that marks a linear layer for the block-sparse kernel.

``torch.export`` keeps custom ops as single graph nodes, so the TVM importer sees
``taskpack::bsr_linear(x, weight, scale, bias, bh, bw, relu)`` with the weight as a constant and
swaps in the TIR kernel (see ``tvm_backend``). In eager mode the op is an ordinary dense linear
(+ ReLU), so a rewritten module is numerically the module it came from. After the ``int8``
transform the weight is int8 with per-row ``scale`` (else ``scale`` is None) and eager runs the
dequantized weight.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .int8_ops import dequantize_weight, quantize_weight

__all__ = ["BlockSparseLinear", "OP_NAME"]

OP_NAME = "bsr_linear.default"  # how the op's node target is named in an exported graph


@torch.library.custom_op("taskpack::bsr_linear", mutates_args=())
def bsr_linear(
    x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, bias: torch.Tensor | None,
    bh: int, bw: int, relu: bool,
) -> torch.Tensor:
    w = weight if scale is None else dequantize_weight(weight, scale)
    y = F.linear(x, w, bias)
    return torch.relu(y) if relu else y


@bsr_linear.register_fake
def _(x, weight, scale, bias, bh, bw, relu):  # noqa: ANN001 - signature fixed by torch.library
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


class BlockSparseLinear(nn.Module):
    """``nn.Linear`` (optionally fused with the ReLU after it) whose weight has (bh, bw) blocks.

    ``scale`` is None for an fp32 weight; after :meth:`to_int8` the weight holds int8 codes and
    ``scale`` their per-row scales.
    """

    scale: torch.Tensor | None

    def __init__(self, linear: nn.Linear, bh: int, bw: int, relu: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), False)
        self.register_buffer("scale", None)
        self.bh, self.bw, self.relu = bh, bw, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = torch.ops.taskpack.bsr_linear
        return op(x, self.weight, self.scale, self.bias, self.bh, self.bw, self.relu)

    def to_int8(self) -> BlockSparseLinear:
        """A copy with int8 weight codes and per-row scales (zero blocks stay zero)."""
        if self.scale is not None:
            return self
        q, scale = quantize_weight(self.weight)
        placeholder = nn.utils.skip_init(nn.Linear, 1, 1)  # no init: leaves the RNG alone
        new = BlockSparseLinear(placeholder, self.bh, self.bw, self.relu)
        new.weight = nn.Parameter(q, requires_grad=False)
        new.bias = self.bias
        new.scale = scale
        return new.eval()

    def extra_repr(self) -> str:
        out, inp = self.weight.shape
        kind = "fp32" if self.scale is None else "int8"
        return f"{inp}->{out}, block=({self.bh},{self.bw}), {kind}, relu={self.relu}"
