"""A torch custom op that marks a linear layer for the block-sparse kernel.

``torch.export`` keeps custom ops as single graph nodes, so the TVM importer sees
``taskpack::bsr_linear(x, weight, bias, bh, bw, relu)`` with the weight as a constant and swaps
in the TIR kernel (see ``tvm_backend``). In eager mode the op is an ordinary dense linear (+ ReLU),
so a rewritten module is numerically the module it came from.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BlockSparseLinear", "OP_NAME"]

OP_NAME = "bsr_linear.default"  # how the op's node target is named in an exported graph


@torch.library.custom_op("taskpack::bsr_linear", mutates_args=())
def bsr_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bh: int, bw: int, relu: bool
) -> torch.Tensor:
    y = F.linear(x, weight, bias)
    return torch.relu(y) if relu else y


@bsr_linear.register_fake
def _(x, weight, bias, bh, bw, relu):  # noqa: ANN001 - signature fixed by torch.library
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


class BlockSparseLinear(nn.Module):
    """``nn.Linear`` (optionally fused with the ReLU after it) whose weight has (bh, bw) blocks."""

    def __init__(self, linear: nn.Linear, bh: int, bw: int, relu: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), False)
        self.bh, self.bw, self.relu = bh, bw, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = torch.ops.taskpack.bsr_linear
        return op(x, self.weight, self.bias, self.bh, self.bw, self.relu)

    def extra_repr(self) -> str:
        out, inp = self.weight.shape
        return f"{inp}->{out}, block=({self.bh},{self.bw}), relu={self.relu}"
