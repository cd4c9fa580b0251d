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

Mode = Literal["scores", "mask", "dense"]

# Below this size torch's kthvalue is fast enough; above it the bracketing search is ~5x faster.
_EXACT_KTH_LIMIT = 200_000
_SAMPLE = 16_384


def kth_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The exact k-th smallest (1-based) value of a flat tensor.

    ``torch.kthvalue`` on the 4M scores of a 2000x2000 layer costs ~45 ms, more than the layer's
    matmuls. We bracket the answer with quantiles of a fixed strided sample, count what lies below
    the bracket, and select inside it. The result is exact whatever the sample: if the bracket
    misses, we fall back to the full ``kthvalue``.
    """
    n = x.numel()
    if not 1 <= k <= n:
        raise ValueError(f"`1 <= k <= n` must hold, but got (k={k}, n={n}).")
    if n <= _EXACT_KTH_LIMIT:
        return x.kthvalue(k).values
    stride = n // _SAMPLE
    sample = x[::stride].sort().values
    q = (k - 0.5) / n
    pad = 4.0 * math.sqrt(q * (1 - q) / sample.numel()) + 2.0 / sample.numel()
    lo = sample[max(0, math.floor((q - pad) * sample.numel()))]
    hi = sample[min(sample.numel() - 1, math.ceil((q + pad) * sample.numel()))]
    at_least_lo = x >= lo
    below = n - int(torch.count_nonzero(at_least_lo))  # 5x a bool sum on CPU
    inside = x[at_least_lo & (x <= hi)]
    if below < k <= below + inside.numel():
        return inside.kthvalue(k - below).values
    return x.kthvalue(k).values


def topc_mask(scores: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask of the ``density`` fraction of entries with the largest |score|.

    Keeps ``max(1, round(density * n))`` entries (more only on exact ties at the threshold).
    """
    return _topc_of_abs(scores.detach().abs(), density)


def _topc_of_abs(a: torch.Tensor, density: float) -> torch.Tensor:
    """``topc_mask`` of scores whose absolute values ``a`` are given (one pass fewer)."""
    if not 0 < density <= 1:
        raise ValueError(f"`0 < density <= 1` must hold, but got density={density}.")
    flat = a.flatten()
    n = flat.numel()
    keep = max(1, round(density * n))
    if keep >= n:
        return torch.ones_like(a, dtype=torch.bool)
    if flat.device.type == "cpu":
        threshold = kth_smallest(flat, n - keep + 1)
    else:  # kthvalue is a sort on CUDA (~30x a dense step); the bracket needs host syncs
        threshold = kth_largest_radix(flat, keep)
    return a >= threshold


def kth_largest_radix(x: torch.Tensor, k: int) -> torch.Tensor:
    """The exact k-th largest (1-based) of a flat tensor of non-negative floats, as a 1-element
    tensor, with no host synchronisation (a radix select on the device).

    Non-negative float32 values order like their bit patterns read as int32, so the answer is
    found 16 bits at a time: count the values per high half (a 65,536-bin histogram), pick the
    bin where the count of values at or above it first reaches ``k``, then do the same for the
    low half among the values of that bin. Ties: ``x >= result`` keeps at least ``k`` values,
    exactly like ``kthvalue``'s threshold.
    """
    n = x.numel()
    if not 1 <= k <= n:
        raise ValueError(f"`1 <= k <= n` must hold, but got (k={k}, n={n}).")
    bits = x.detach().float().contiguous().view(torch.int32)
    hi, lo = bits >> 16, bits & 0xFFFF
    need = torch.full((), k, dtype=torch.int64, device=x.device)
    top, need = _radix_digit(hi, torch.ones_like(hi, dtype=torch.int64), need)
    low, _ = _radix_digit(lo, (hi == top).long(), need)
    return ((top << 16) | low).to(torch.int32).reshape(1).view(torch.float32)


def _radix_digit(digit: torch.Tensor, weight: torch.Tensor,
                 need: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest 16-bit digit d with (weighted) count of digits >= d at least ``need``, and
    what is still needed inside d's bin."""
    hist = torch.zeros(1 << 16, dtype=torch.int64, device=digit.device)
    hist.index_add_(0, digit.flatten(), weight.flatten())
    at_or_above = hist.flip(0).cumsum(0).flip(0)  # non-increasing in d
    d = (at_or_above >= need).sum() - 1
    return d, need - (at_or_above[d] - hist[d])


class _StraightThrough(torch.autograd.Function):
    """Forward: the top-c mask as floats. Backward: the gradient passes to |score| unchanged."""

    @staticmethod
    def forward(ctx, abs_scores: torch.Tensor, density: float) -> torch.Tensor:
        return _topc_of_abs(abs_scores.detach(), density).to(abs_scores.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class MaskedLayer(nn.Module):
    """Mixin state shared by MaskedLinear and MaskedConv2d."""

    weight: torch.Tensor  # as nn.Linear / nn.Conv2d declare it (a Parameter at runtime)
    score: nn.Parameter

    def _init_masking(self) -> None:
        self.score = nn.Parameter(torch.empty_like(self.weight))
        # WSN: scores get their own Kaiming-uniform init (a=sqrt(5)), independent of the weights.
        nn.init.kaiming_uniform_(self.score, a=math.sqrt(5))
        self.mode: Mode = "dense"
        self.density = 1.0
        self.register_buffer("fixed_mask", None, persistent=False)

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
        if self.mode == "scores":
            return self.weight * _StraightThrough.apply(self.score.abs(), self.density)
        if self.mode == "mask":
            assert self.fixed_mask is not None
            return self.weight * self.fixed_mask
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
