"""A torch custom op that carries a weight-only int8 linear layer through ``torch.export``.

``torch.export`` keeps custom ops as single graph nodes, so the TVM importer sees
``taskpack::int8_linear(x, qweight, scale, bias, relu)`` with the int8 weight and its scales as
constants and swaps in the int8 TIR kernel (see ``compilers.tvm.importer`` and
``compilers.tvm.kernels.int8``). In eager mode the op is a dense fp32 linear on the dequantized
weight ``qweight * scale[:, None]`` (+ ReLU): the numerical reference of the int8 build."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["INT8_OP_NAME", "Int8Linear", "dequantize_weight", "quantize_weight"]

INT8_OP_NAME = "int8_linear.default"  # how the op's node target is named in an exported graph
QMAX = 127  # symmetric range [-127, 127]: -128 is never used, so negation stays exact


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-row symmetric int8: ``(q, scale)`` with ``weight ~ q * scale[:, None]``.

    ``scale = max|row| / 127`` (1.0 for an all-zero row, whose codes are all 0), zero point 0.
    """
    w = weight.detach().float().reshape(weight.shape[0], -1)
    amax = w.abs().amax(dim=1)
    scale = torch.where(amax > 0, amax / QMAX, torch.ones_like(amax))
    q = torch.clamp(torch.round(w / scale[:, None]), -QMAX, QMAX).to(torch.int8)
    return q.reshape(weight.shape), scale


def dequantize_weight(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q * scale`` per output row, in fp32 (one rounding: exactly what the kernel multiplies)."""
    return q.float() * scale.reshape(-1, *([1] * (q.dim() - 1)))


@torch.library.custom_op("taskpack::int8_linear", mutates_args=())
def int8_linear(
    x: torch.Tensor, qweight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None,
    relu: bool,
) -> torch.Tensor:
    y = F.linear(x, dequantize_weight(qweight, scale), bias)
    return torch.relu(y) if relu else y


@int8_linear.register_fake
def _(x, qweight, scale, bias, relu):  # noqa: ANN001 - signature fixed by torch.library
    return x.new_empty((*x.shape[:-1], qweight.shape[0]))


class Int8Linear(nn.Module):
    """``nn.Linear`` (optionally fused with the ReLU after it) holding an int8 weight.

    Buffers: ``qweight`` (out, in) int8, ``scale`` (out,) fp32, ``bias`` (out,) fp32 or None.
    """

    # Buffers registered in __init__ (nn.Module.__getattr__ is typed as Tensor | Module).
    qweight: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, linear: nn.Linear, relu: bool = False) -> None:
        super().__init__()
        q, scale = quantize_weight(linear.weight)
        self.register_buffer("qweight", q)
        self.register_buffer("scale", scale)
        bias = linear.bias
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        op = torch.ops.taskpack.int8_linear
        return op(x, self.qweight, self.scale, self.bias, self.relu)

    def dequantized(self) -> nn.Module:
        """The dense fp32 ``nn.Linear`` (+ ReLU) computing exactly what this layer computes."""
        out, inp = self.qweight.shape
        linear = nn.utils.skip_init(nn.Linear, inp, out, bias=self.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(dequantize_weight(self.qweight, self.scale))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return nn.Sequential(linear, nn.ReLU()) if self.relu else linear

    def extra_repr(self) -> str:
        out, inp = self.qweight.shape
        return f"{inp}->{out}, int8 per-row scales, relu={self.relu}"
