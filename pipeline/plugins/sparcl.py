"""SparCL's data and gradient sparsity (Wang, Zhan et al., NeurIPS 2022) as training plugins.

``data_removal`` (DDR): count per example its forgetting events (correct at one presentation,
wrong at the next); at each listed epoch remove ``fraction / len(at_epochs)`` of the task's
examples, those with the fewest events (the easiest), never-learned ones counting as the most,
then reset the counts (SparCL removes 3000 per CIFAR-10 task at epochs 5, 10, 15, 20 of 50; ours
default to 30% at epochs 1-4, for 5-epoch tasks).

``gradient_masking`` (DGM): every ``interval`` steps, per masked layer, keep the ``keep`` fraction
of the non-zero weight-gradient entries with the largest magnitude and reuse that gradient mask
for the steps until the next update. SparCL takes the 80th percentile of |g| over the whole
tensor, pruned zeros included; we count only the entries that can train (the task's own, in its
mask), so ``keep`` is the fraction of them that still updates. Scores and heads are not masked.

Both act on the current task only: removal picks among its examples, the gradient mask only
zeroes more of the gradients the method left (earlier tasks' entries are zero already), so
forgetting stays at zero. SparCL's rehearsal buffer and task-aware dynamic masking are not
ported: taskpack's methods are rehearsal-free and their masks come from the method.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from pipeline.plugins._base import TrainPlugin
from pipeline.plugins._registry import register_plugin
from pipeline.recipe import DataRemovalPlugin, GradientMaskingPlugin

if TYPE_CHECKING:
    from pipeline.data import Task

__all__ = ["DataRemoval", "GradientMasking"]


class DataRemoval(TrainPlugin):
    cfg: DataRemovalPlugin

    def begin_task(self, task: int, data: Task) -> None:
        n, on = len(data.train), data.train.y.device
        self.n = n
        self.prev = torch.zeros(n, dtype=torch.bool, device=on)
        self.learned = torch.zeros(n, dtype=torch.bool, device=on)
        self.events = torch.zeros(n, dtype=torch.int64, device=on)
        self.removed = torch.zeros(n, dtype=torch.bool, device=on)
        self.done: set[int] = set()

    def after_forward(self, task: int, idx: torch.Tensor, logits: torch.Tensor,
                      y: torch.Tensor) -> None:
        correct = logits.argmax(1) == y
        self.events[idx] += (self.prev[idx] & ~correct).long()
        self.learned[idx] |= correct
        self.prev[idx] = correct

    def select(self, task: int, epoch: int, order: torch.Tensor) -> torch.Tensor:
        if epoch in self.cfg.at_epochs and epoch not in self.done:
            self.done.add(epoch)
            self.remove(math.floor(self.cfg.fraction * self.n / len(self.cfg.at_epochs)))
        return order[~self.removed[order]]

    def remove(self, count: int) -> None:
        """Remove the ``count`` kept examples with the fewest forgetting events."""
        events = torch.where(self.learned, self.events, torch.iinfo(torch.int64).max)
        events = torch.where(self.removed, -1, events)  # already gone: sort first, skip
        ranked = torch.sort(events, stable=True).indices  # ties: lower index first
        start = int(self.removed.sum())
        self.removed[ranked[start:start + count]] = True
        self.events.zero_()

    def stats(self) -> dict[str, float]:
        return {"examples_removed": float(self.removed.sum())}


class GradientMasking(TrainPlugin):
    cfg: GradientMaskingPlugin

    def begin_task(self, task: int, data: Task) -> None:
        self.step = 0
        self.masks: dict[str, torch.Tensor] = {}
        self.kept, self.nonzero = 0, 0

    def after_backward(self, task: int) -> None:
        update = self.step % self.cfg.interval == 0
        for name, layer in self.model.masked_layers().items():
            g = layer.weight.grad
            if g is None:
                continue
            if update or name not in self.masks:
                self.masks[name], nonzero = self.gradient_mask(g)
                self.kept += int(self.masks[name].sum())
                self.nonzero += nonzero
            g.mul_(self.masks[name])
        self.step += 1

    def gradient_mask(self, g: torch.Tensor) -> tuple[torch.Tensor, int]:
        """The ``keep`` fraction of ``g``'s non-zero entries with the largest |g| (ties at the
        threshold kept), and how many entries were non-zero."""
        a = g.detach().abs()
        nonzero = a[a > 0]
        keep = math.ceil(self.cfg.keep * nonzero.numel())
        if keep == 0:
            return torch.zeros_like(g), 0
        threshold = nonzero.kthvalue(nonzero.numel() - keep + 1).values
        return (a >= threshold).to(g.dtype), nonzero.numel()

    def weight_grad_fraction(self, layer: str) -> float:
        return self.cfg.keep if layer in self.model.masked_layers() else 1.0

    def stats(self) -> dict[str, float]:
        kept = self.kept / self.nonzero if self.nonzero else 1.0
        return {"gradient_kept_fraction": kept}


register_plugin("data_removal", DataRemovalPlugin, DataRemoval)
register_plugin("gradient_masking", GradientMaskingPlugin, GradientMasking)
