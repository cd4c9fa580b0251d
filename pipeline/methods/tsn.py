"""TSN (TinySubNets) done right: WSN training plus a bit budget per weight position.

With ``policy: reuse_only`` a task trains only free positions (WSN semantics). With
``policy: split`` a position an earlier task holds stays trainable for the current task while it
has at least ``max(quantize.bits)`` free bits: the task's trained value there becomes an own code
of its own in those free bits ("a single weight separated into parts for different tasks"),
while earlier tasks keep decoding their own codes. Pruning and quantization happen after
training, in the compress stage (``pipeline.compress``), with the passes ``compression()`` names.
"""

from __future__ import annotations

import torch

from pipeline.methods._base import TaskMasks
from pipeline.methods._registry import register_method
from pipeline.methods.wsn import WSN
from pipeline.models import ContinualNet, topc_mask
from pipeline.recipe import Recipe, TSNMethod


class TSN(WSN):
    cfg: TSNMethod

    def __init__(self, model: ContinualNet, cfg: TSNMethod, recipe: Recipe | None = None) -> None:
        super().__init__(model, cfg, recipe)
        self.bit_budget = recipe.store.bit_budget if recipe is not None else 32
        self.split_bits = max(cfg.quantize.bits)
        self.stored = {n: torch.zeros_like(m.weight) for n, m in model.masked_layers().items()}
        self.splittable = {n: torch.zeros_like(m, dtype=torch.bool)
                           for n, m in self.consolidated.items()}

    def load_store_state(self, held: dict[str, torch.Tensor], values: dict[str, torch.Tensor],
                         used_bits: dict[str, torch.Tensor] | None = None) -> None:
        super().load_store_state(held, values)
        for name in self.stored:
            self.stored[name] = torch.where(held[name], values[name], 0.0)
            if self.cfg.policy == "split" and used_bits is not None:
                free = self.bit_budget - used_bits[name]
                self.splittable[name] = held[name] & (free >= self.split_bits)
        self.frozen = {n: self.consolidated[n] & ~self.splittable[n] for n in self.consolidated}

    def end_task(self, task: int) -> TaskMasks:
        mask, own, shared = {}, {}, {}
        for name, layer in self.model.masked_layers().items():
            m = topc_mask(layer.score, self.density)
            held = self.consolidated[name]
            changed = self.splittable[name] & (layer.weight.detach() != self.stored[name])
            mask[name] = m
            own[name] = m & (~held | changed)
            shared[name] = m & ~own[name]
        self.masks.append(mask)
        return TaskMasks(mask, own, shared, self.task_stats())


register_method("tsn", TSNMethod, TSN)
