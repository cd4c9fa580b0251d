"""Torch custom op that marks a linear layer with an unstructured sparse weight for the CSR kernel.

``taskpack::csr_linear(x, weight, bias, relu)`` keeps the (mostly zero) weight as a constant, so
the TVM importer swaps in the CSR TIR kernel (``compilers.tvm.kernels.csr``). In eager mode it is
an ordinary dense linear (+ ReLU): a rewritten module computes the same numbers as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CSR_OP_NAME", "CSRLinear"]

CSR_OP_NAME = "csr_linear.default"  # how the op's node target is named in an exported graph


@torch.library.custom_op("taskpack::csr_linear", mutates_args=())
def csr_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
               relu: bool) -> torch.Tensor:
    y = F.linear(x, weight, bias)
    return torch.relu(y) if relu else y


@csr_linear.register_fake
def _(x, weight, bias, relu):  # noqa: ANN001 - signature fixed by torch.library
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


class CSRLinear(nn.Module):
    """``nn.Linear`` (optionally fused with the ReLU after it), unstructured sparse weight."""

    def __init__(self, linear: nn.Linear, relu: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(linear.weight.detach().clone(), requires_grad=False)
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), False)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.taskpack.csr_linear(x, self.weight, self.bias, self.relu)

    def extra_repr(self) -> str:
        out, inp = self.weight.shape
        density = float((self.weight != 0).float().mean())
        return f"{inp}->{out}, density={density:.3f}, relu={self.relu}"
