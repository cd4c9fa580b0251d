"""Exact top-c selection: the threshold above which the ``density`` fraction of the largest
``|score|`` lies (WSN's mask), on the CPU by the fused kernel when it is built, else by torch."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pipeline.models._native import kth_largest_abs

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


@dataclass
class ThresholdHint:
    """The last threshold of one score tensor, and the relative half-width of the band around
    it where the next search looks first: doubled after a miss, shrunk by 5 % after a hit, so
    it settles just above how far the threshold moves in a step."""

    t: float | None = None
    band: float = 1 / 64
    hits: int = 0
    misses: int = 0


def threshold(s: torch.Tensor, density: float,
              hint: ThresholdHint | None = None) -> torch.Tensor | None:
    """|s| >= threshold is the top-``density`` mask of ``s`` (``topc_mask``); None when every
    entry is kept. With a ``hint`` (a layer's, across training steps) the fused kernel first
    looks near the last threshold; the result is exact either way."""
    n = s.numel()
    if not 0 < density <= 1:
        raise ValueError(f"`0 < density <= 1` must hold, but got density={density}.")
    keep = max(1, round(density * n))
    if keep >= n:
        return None
    s = s.detach()
    value = None
    if hint is not None and hint.t is not None:
        near = (hint.t * (1 - hint.band), hint.t * (1 + hint.band))
        value = kth_largest_abs(s, keep, near=near)
        if value is None:
            hint.misses += 1
            hint.band = min(2 * hint.band, 1.0)
        else:
            hint.hits += 1
            hint.band = max(hint.band * 0.95, 1 / 4096)
    if value is None:
        value = kth_largest_abs(s, keep)
    if value is not None:
        if hint is not None:
            hint.t = value
        return torch.tensor(value, dtype=s.dtype)
    a = s.abs().flatten()
    if a.device.type == "cpu":
        return kth_smallest(a, n - keep + 1)
    # kthvalue is a sort on CUDA (~30x a dense step); the bracket needs host syncs
    return kth_largest_radix(a, keep)


def topc_mask(scores: torch.Tensor, density: float) -> torch.Tensor:
    """Boolean mask of the ``density`` fraction of entries with the largest |score|.

    Keeps ``max(1, round(density * n))`` entries (more only on exact ties at the threshold).
    """
    t = threshold(scores, density)
    if t is None:
        return torch.ones_like(scores, dtype=torch.bool)
    return scores.detach().abs() >= t
