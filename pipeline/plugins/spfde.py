"""SPFDE's progressive layer freezing and data sieving as training plugins.

No card for SPFDE was available to this project; both plugins implement the published idea as
described in its abstract, in our own words: training cost on the edge falls when (1) layers that
have stopped changing stop training, front to back, and (2) each epoch trains on the examples that
still teach something (data efficiency). Thresholds and schedules are ours.

``layer_freezing``: after ``warmup_epochs``, at the end of every epoch the front-most masked layer
still training freezes when its trainable tensors (weight and scores) moved less than
``tolerance`` relative to their norm over that epoch; the next layer may freeze at a later epoch
only after it, and at most ``max_frozen`` of the masked layers do; the head never does. A frozen
layer's tensors stop requiring gradients, so autograd computes neither their gradient nor, below
the first training layer, the input gradients: the backward pass really shrinks. Freezing holds
for the rest of the phase; the next phase starts with every layer training.

``data_sieving``: every training example's loss is recorded when it is trained on; after
``warmup_epochs`` each epoch trains only on the ``keep`` fraction with the highest last loss (the
examples not yet fitted), with a full epoch every ``refresh_every`` epochs to refresh the losses.

Both act on the current task only (its own trainable tensors and its own examples), so forgetting
stays at zero.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from pipeline.plugins._base import TrainPlugin
from pipeline.plugins._registry import register_plugin
from pipeline.recipe import DataSievingPlugin, LayerFreezingPlugin

if TYPE_CHECKING:
    from pipeline.data import Task
    from pipeline.methods import Phase

__all__ = ["DataSieving", "LayerFreezing"]


class LayerFreezing(TrainPlugin):
    cfg: LayerFreezingPlugin

    def begin_task(self, task: int, data: Task) -> None:
        self.most_frozen = 0
        self.frozen_epochs = 0

    def begin_phase(self, phase: Phase) -> None:
        trained = {id(p) for g in phase.param_groups for p in g["params"]}
        layers = self.model.masked_layers()
        # per masked layer, in forward order: its tensors this phase trains
        self.layers = [[p for p in (m.weight, m.score) if id(p) in trained and p.requires_grad]
                       for m in layers.values()]
        self.limit = math.floor(self.cfg.max_frozen * len(self.layers))
        self.frozen: list[torch.Tensor] = []  # tensors whose requires_grad we turned off
        self.count = 0
        self.last = [[p.detach().clone() for p in ps] for ps in self.layers]

    def after_epoch(self, task: int, epoch: int) -> None:
        self.frozen_epochs += self.count
        moved = [_relative_change(ps, last) for ps, last in zip(self.layers, self.last,
                                                               strict=True)]
        self.last = [[p.detach().clone() for p in ps] for ps in self.layers]
        if epoch + 1 < self.cfg.warmup_epochs or self.count >= self.limit:
            return
        i = self.count
        if self.layers[i] and moved[i] < self.cfg.tolerance:
            for p in self.layers[i]:
                p.requires_grad_(False)
                self.frozen.append(p)
            self.count += 1
            self.most_frozen = max(self.most_frozen, self.count)
        elif not self.layers[i]:  # nothing of it trains in this phase: counts as frozen
            self.count += 1

    def end_phase(self) -> None:
        for p in self.frozen:
            p.requires_grad_(True)
        self.frozen = []

    def stats(self) -> dict[str, float]:
        return {"layers_frozen": float(self.most_frozen),
                "frozen_layer_epochs": float(self.frozen_epochs)}


def _relative_change(now: list[torch.Tensor], before: list[torch.Tensor]) -> float:
    if not now:
        return 0.0
    diff = math.sqrt(sum(float((a.detach() - b).pow(2).sum()) for a, b in zip(now, before,
                                                                               strict=True)))
    norm = math.sqrt(sum(float(b.pow(2).sum()) for b in before))
    return diff / norm if norm > 0 else math.inf


class DataSieving(TrainPlugin):
    cfg: DataSievingPlugin

    def begin_task(self, task: int, data: Task) -> None:
        n = len(data.train)
        self.loss = torch.full((n,), math.inf, device=data.train.y.device)
        self.keep = max(1, math.ceil(self.cfg.keep * n))
        self.sieved = 0

    def after_forward(self, task: int, idx: torch.Tensor, logits: torch.Tensor,
                      y: torch.Tensor) -> None:
        self.loss[idx] = F.cross_entropy(logits.float(), y, reduction="none")

    def select(self, task: int, epoch: int, order: torch.Tensor) -> torch.Tensor:
        every = self.cfg.refresh_every
        if epoch < self.cfg.warmup_epochs or (every and epoch % every == 0):
            return order
        # the `keep` highest last losses (ties: lower index first)
        ranked = torch.sort(-self.loss, stable=True).indices[:self.keep]
        chosen = torch.zeros_like(self.loss, dtype=torch.bool)
        chosen[ranked] = True
        out = order[chosen[order]]
        self.sieved += len(order) - len(out)
        return out

    def stats(self) -> dict[str, float]:
        return {"examples_sieved": float(self.sieved)}


register_plugin("layer_freezing", LayerFreezingPlugin, LayerFreezing)
register_plugin("data_sieving", DataSievingPlugin, DataSieving)
