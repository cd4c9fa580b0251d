"""Masked layers: the building blocks every taskpack model is made of.

A masked layer holds a dense ``weight`` and a ``score`` tensor of the same shape (WSN). It runs in
one of three modes:

- ``"scores"``: the mask is the top-c fraction of ``|score|``, recomputed every forward, with a
  straight-through gradient to the scores (training a task);
- ``"mask"``: a fixed boolean mask multiplies the weight (evaluating a mask without the store);
- ``"dense"``: ``weight`` is used as it is. Evaluation from committed state swaps in the task's
  materialized (already masked) weight with ``torch.func.functional_call``.

Layers have no bias: a shared bias would be trained by every task and break forget-freedom.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models._fused import masked_weight
from pipeline.models._topc import ThresholdHint, topc_mask

Mode = Literal["scores", "mask", "dense"]


class MaskedLayer(nn.Module):
    """Mixin state shared by MaskedLinear and MaskedConv2d."""

    weight: torch.Tensor  # as nn.Linear / nn.Conv2d declare it (a Parameter at runtime)
    score: nn.Parameter
    fixed_mask: torch.Tensor | None  # buffers (not saved with the model)
    frozen: torch.Tensor | None

    def _init_masking(self) -> None:
        self.score = nn.Parameter(torch.empty_like(self.weight))
        # WSN: scores get their own Kaiming-uniform init (a=sqrt(5)), independent of the weights.
        nn.init.kaiming_uniform_(self.score, a=math.sqrt(5))
        self.mode: Mode = "dense"
        self.density = 1.0
        self.register_buffer("fixed_mask", None, persistent=False)
        # positions whose weight gradient is zero while a phase trains (``Phase.frozen``)
        self.register_buffer("frozen", None, persistent=False)
        self.hint = ThresholdHint()  # the last top-c threshold: the next one is searched near it

    def set_mode(self, mode: Mode, density: float | None = None,
                 mask: torch.Tensor | None = None) -> None:
        if mode == "mask" and mask is None:
            raise ValueError("mode 'mask' needs a mask")
        self.mode = mode
        if density is not None:
            self.density = density
        self.fixed_mask = None if mask is None else mask.to(self.weight.device)

    def current_mask(self) -> torch.Tensor:
        """The mask the layer would apply now in ``scores`` mode (no gradient)."""
        return topc_mask(self.score, self.density)

    def effective_weight(self) -> torch.Tensor:
        """The weight the layer computes with, as one autograd node (``masked_weight``)."""
        if self.mode == "scores":
            return masked_weight(self.weight, self.score, self.density, None, self.frozen,
                                 self.hint)
        if self.mode == "mask":
            assert self.fixed_mask is not None
            return masked_weight(self.weight, None, None, self.fixed_mask, self.frozen)
        if self.frozen is not None:
            return masked_weight(self.weight, None, None, None, self.frozen)
        return self.weight


class MaskedLinear(nn.Linear, MaskedLayer):
    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=False)
        self._init_masking()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.effective_weight())


class MaskedConv2d(nn.Conv2d, MaskedLayer):
    # nn.Conv2d stores these as 2-tuples (torch's _ConvNd declares tuple[int, ...])
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: str | tuple[int, int]

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int = 1,
                 padding: int = 0) -> None:
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False)
        self._init_masking()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.effective_weight(), None)


class TaskBatchNorm(nn.Module):
    """One BatchNorm per task (``norm: per_task``); the task's BN is stored with the task."""

    def __init__(self, features: int, dims: int) -> None:
        super().__init__()
        self.features, self.dims = features, dims
        self.norms = nn.ModuleList()
        self.task = 0

    def add_task(self) -> None:
        cls = nn.BatchNorm1d if self.dims == 1 else nn.BatchNorm2d
        self.norms.append(cls(self.features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.norms:  # shape probing before the first task: BN keeps shapes
            return x
        return self.norms[self.task](x)


def make_norm(kind: str, features: int, dims: int) -> nn.Module:
    """``none`` -> identity; ``stateless`` -> BN without affine or running stats (batch
    statistics even at test, as WSN); ``per_task`` -> TaskBatchNorm."""
    if kind == "none":
        return nn.Identity()
    if kind == "stateless":
        cls = nn.BatchNorm1d if dims == 1 else nn.BatchNorm2d
        return cls(features, affine=False, track_running_stats=False)
    if kind == "per_task":
        return TaskBatchNorm(features, dims)
    raise ValueError(f"norm must be none, stateless or per_task, got {kind!r}")
