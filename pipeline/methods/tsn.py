"""TSN (TinySubNets) done right: WSN training plus a bit budget per weight position.

With ``policy: reuse_only`` a task trains only free positions (WSN semantics). With
``policy: split`` a position an earlier task holds stays trainable for the current task while it
has at least ``max(quantize.bits)`` free bits: the task's trained value there becomes an own code
of its own in those free bits ("a single weight separated into parts for different tasks"),
while earlier tasks keep decoding their own codes. Pruning and quantization happen after
training, in the runner's compress stage (``pipeline.compress``).
"""

from __future__ import annotations

import torch

from pipeline.methods._base import TaskMasks
from pipeline.methods.wsn import WSN
from pipeline.models import ContinualNet, topc_mask


class TSN(WSN):
    def __init__(self, model: ContinualNet, cfg, bit_budget: int = 32) -> None:
        super().__init__(model, cfg.density)
        self.cfg = cfg
        self.bit_budget = bit_budget
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
        return TaskMasks(mask, own, shared, self.capacity_stats())

    def finalize(self, task: int, mask: dict[str, torch.Tensor]) -> None:
        """Record the task's mask after compression (pruning shrinks it)."""
        self.masks[task] = mask
