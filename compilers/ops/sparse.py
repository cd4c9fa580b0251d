"""Torch custom ops that mark linear and conv layers for the block-sparse kernel.

``torch.export`` keeps custom ops as single graph nodes, so the TVM importer sees
``taskpack::bsr_linear(x, weight, scale, bias, bh, bw, relu)`` with the weight as a constant and
swaps in the TIR kernel (see ``compilers.tvm.importer``). In eager mode the op is an ordinary dense
linear (+ ReLU), so a rewritten module is numerically the module it came from. After the ``int8``
transform the weight is int8 with per-row ``scale`` (else ``scale`` is None) and eager runs the
dequantized weight.

``taskpack::bsr_conv2d(x, weight, bias, stride, padding, dilation, bh, bw, relu)`` does the same
for an ``nn.Conv2d`` (groups 1, zero padding) whose weight, viewed as (O, C*kh*kw), has
(bh, bw) blocks; eager is ``F.conv2d`` (+ ReLU), so the rewrite is exact. The TVM importer lowers
it to the direct block-sparse conv kernel (same BSR packing; a max-pool after it fused). It
stays fp32 under the ``int8`` transform (see ``compilers.transforms._int8``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .int8 import dequantize_weight, quantize_weight

__all__ = [
    "CONV_OP_NAME", "OP_NAME", "BlockSparseConv2d", "BlockSparseLinear", "conv_output_hw",
    "conv_qualifies",
]

OP_NAME = "bsr_linear.default"  # how the op's node target is named in an exported graph
CONV_OP_NAME = "bsr_conv2d.default"


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


@torch.library.custom_op("taskpack::bsr_conv2d", mutates_args=())
def bsr_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: list[int],
    padding: list[int], dilation: list[int], bh: int, bw: int, relu: bool,
) -> torch.Tensor:
    y = F.conv2d(x, weight, bias, tuple(stride), tuple(padding), tuple(dilation))
    return torch.relu(y) if relu else y


def conv_output_hw(
    h: int, w: int, kernel: tuple[int, int], stride: list[int], padding: list[int],
    dilation: list[int],
) -> tuple[int, int]:
    """(H_out, W_out) of a zero-padded conv (PyTorch's formula)."""
    return tuple(  # type: ignore[return-value]
        (size + 2 * p - d * (k - 1) - 1) // s + 1
        for size, k, s, p, d in zip((h, w), kernel, stride, padding, dilation, strict=True)
    )


@bsr_conv2d.register_fake
def _(x, weight, bias, stride, padding, dilation, bh, bw, relu):  # noqa: ANN001
    ho, wo = conv_output_hw(x.shape[-2], x.shape[-1], tuple(weight.shape[2:]), stride, padding,
                            dilation)
    return x.new_empty((x.shape[0], weight.shape[0], ho, wo))


def conv_qualifies(conv: nn.Conv2d) -> bool:
    """Whether the kernel can run ``conv``: groups 1, zero padding given as integers, 2-D."""
    return (
        type(conv) is nn.Conv2d
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and len(conv.kernel_size) == 2
    )


class BlockSparseConv2d(nn.Module):
    """``nn.Conv2d`` (optionally fused with the ReLU after it) whose weight, viewed as
    (O, C*kh*kw), has (bh, bw) blocks. fp32 only."""

    def __init__(self, conv: nn.Conv2d, bh: int, bw: int, relu: bool) -> None:
        super().__init__()
        if not conv_qualifies(conv):
            raise ValueError(
                "BlockSparseConv2d needs an nn.Conv2d with groups=1 and integer zero padding, "
                f"but got {conv}."
            )
        self.weight = nn.Parameter(conv.weight.detach().clone(), requires_grad=False)
        bias = conv.bias
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), False)
        self.stride = [int(s) for s in conv.stride]
        self.padding = [int(p) for p in conv.padding]
        self.dilation = [int(d) for d in conv.dilation]
        self.bh, self.bw, self.relu = bh, bw, relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = torch.ops.taskpack.bsr_conv2d
        return op(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.bh,
                  self.bw, self.relu)

    def extra_repr(self) -> str:
        out, inp, kh, kw = self.weight.shape
        return (f"{inp}->{out}, kernel=({kh},{kw}), stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, block=({self.bh},{self.bw}), relu={self.relu}")
