"""Pruning patterns: which of a task's weights go together when it is pruned.

A layer's weight is viewed as a 2-D matrix [out, in * kh * kw]. A pattern splits it into groups:

- ``unstructured``: every weight is its own group;
- ``n:m``: groups of ``m`` consecutive inputs of one output; pruning keeps the ``n`` largest own
  weights of each group (a fixed sparsity of 1 - n/m, done in one step);
- ``block(h,w)``: ``h`` x ``w`` tiles (h output rows by w inputs), the unit a block-sparse kernel
  skips; 16x1 / 8x1 / 4x4 match the compiled kernels' loop order (docs/compilers.md);
- ``channel``: whole output rows (neurons, filters), which shrink shapes.

Pruning removes whole groups from the task's mask, shared positions in them included (the task
stops reading them; that frees no capacity but keeps the group empty, which is what makes the
structure usable by a compiler). Only groups holding own weights are candidates, and the amount
pruned is counted in own weights, because the plan's ``sparsity`` is the fraction of the task's
own weights removed.
"""

from __future__ import annotations

import torch

from pipeline.recipe import Pattern


def group_ids(shape: tuple[int, ...], pattern: Pattern,
              device: torch.device | None = None) -> torch.Tensor:
    """An int64 tensor of ``shape`` on ``device``: the group each position belongs to."""
    rows = shape[0]
    cols = 1
    for s in shape[1:]:
        cols *= s
    r = torch.arange(rows, device=device).unsqueeze(1).expand(rows, cols)
    c = torch.arange(cols, device=device).unsqueeze(0).expand(rows, cols)
    if pattern.kind == "unstructured":
        ids = r * cols + c
    elif pattern.kind == "channel":
        ids = r
    elif pattern.kind == "nm":
        per_row = -(-cols // pattern.b)
        ids = r * per_row + c // pattern.b
    else:
        per_row = -(-cols // pattern.b)
        ids = (r // pattern.a) * per_row + c // pattern.b
    return ids.reshape(shape)


def prune_step(weight: torch.Tensor, mask: torch.Tensor, own: torch.Tensor, pattern: Pattern,
               fraction: float) -> torch.Tensor:
    """A smaller mask: removes lowest-norm groups holding >= ``fraction`` of the ``own``
    (prunable) positions; ``weight`` ranks them (the task's values, or any importance score).

    For ``n:m`` the fraction is ignored: every group keeps its ``n`` largest own weights.
    Returns the new mask; the new own set is ``own & new_mask``.
    """
    w = weight.detach()
    if pattern.kind == "nm":
        return _prune_nm(w, mask, own, pattern)
    n_own = int(own.sum())
    target = int(round(fraction * n_own))
    if target <= 0:
        return mask.clone()
    dev = w.device
    ids = group_ids(tuple(w.shape), pattern, dev).flatten()
    flat_mask, flat_own = mask.flatten(), own.flatten()
    groups = int(ids.max()) + 1
    # group score: L2 norm of the task's weights in the group; own count per group
    sq = torch.zeros(groups, dtype=torch.float64, device=dev).index_add_(
        0, ids, (w.flatten().double() ** 2) * flat_mask.double())
    own_count = torch.zeros(groups, dtype=torch.int64, device=dev).index_add_(
        0, ids, flat_own.long())
    candidates = torch.nonzero(own_count > 0).flatten()
    # ties broken by group id so the result is deterministic
    order = candidates[torch.argsort(sq[candidates], stable=True)]
    cum = torch.cumsum(own_count[order], 0)
    cut = int(torch.searchsorted(cum, torch.tensor(target, device=dev))) + 1
    drop = torch.zeros(groups, dtype=torch.bool, device=dev)
    drop[order[:cut]] = True
    return (flat_mask & ~drop[ids]).reshape(mask.shape)


def _prune_nm(w: torch.Tensor, mask: torch.Tensor, own: torch.Tensor,
              pattern: Pattern) -> torch.Tensor:
    n, m = pattern.a, pattern.b
    rows = w.shape[0]
    flat_w, flat_mask = w.reshape(rows, -1), mask.reshape(rows, -1)
    flat_own = own.reshape(rows, -1)
    cols = flat_w.shape[1]
    pad = (-cols) % m
    mag = torch.where(flat_own, flat_w.abs(), torch.full_like(flat_w, -1.0))
    mag = torch.nn.functional.pad(mag, (0, pad), value=-1.0).reshape(rows, -1, m)
    # rank own weights inside each group; keep the n largest (non-own entries have -1)
    order = torch.argsort(mag, dim=2, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(2, order, torch.arange(m, device=w.device).expand_as(order).contiguous())
    keep_own = (rank < n).reshape(rows, -1)[:, :cols]
    new_mask = flat_mask & (~flat_own | keep_own)
    return new_mask.reshape(mask.shape)
