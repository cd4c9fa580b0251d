"""WSN (Winning SubNetworks, Kang et al. ICML 2022); see docs/methods.md.

Per layer, a score tensor; each step keeps the top-c fraction of |score| with a straight-through
gradient. Weights used by earlier tasks (the consolidated mask M_{t-1}) get zero gradient and no
weight decay; a fresh optimizer per task keeps stale moments from moving them. After training the
best state is restored and the task's mask is recomputed from the restored scores (the reference
code keeps the last step's mask instead).

With ``mask: rigl`` the scores do not train: each task's mask starts as the top-c of freshly
initialised scores (a uniform random mask) and is rewired by RigL (``pipeline.methods._rigl``),
dropping own weights and regrowing free positions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from pipeline.methods._base import MaskMode, Method, Phase, TaskMasks, masked_snapshot
from pipeline.methods._registry import register_method
from pipeline.methods._rigl import RigLMask
from pipeline.models import ContinualNet, topc_mask
from pipeline.recipe import Recipe, TrainConfig, TSNMethod, WSNMethod

if TYPE_CHECKING:
    from pipeline.data import Task
    from pipeline.store import PackedStore


class WSN(Method):
    def __init__(self, model: ContinualNet, cfg: WSNMethod | TSNMethod,
                 recipe: Recipe | None = None) -> None:
        super().__init__(model, cfg, recipe)
        self.density = cfg.density
        layers = model.masked_layers()
        self.consolidated = {n: torch.zeros_like(m.weight, dtype=torch.bool)
                             for n, m in layers.items()}
        self.masks: list[dict[str, torch.Tensor]] = []
        # positions whose weight the current task must not change (M_{t-1} for WSN)
        self.frozen = self.consolidated
        # a subclass whose config has no ``mask`` field (a method built on WSN) runs top-k
        rigl = getattr(cfg, "rigl", None) if getattr(cfg, "mask", "topk") == "rigl" else None
        self.rigl = None if rigl is None else RigLMask(model, rigl, cfg.density)
        self._rigl_epochs = 1
        self.train_cfg = recipe.train if recipe is not None else TrainConfig()

    def begin_task(self, task: int, store: PackedStore | None = None,
                   data: Task | None = None) -> None:
        done = len(self.masks) if store is None else store.num_tasks
        if task != done:
            raise ValueError(f"tasks must come in order: expected {done}, got {task}")
        if self.rigl is not None:
            self.rigl.reset_stats()
            # a fresh random mask per task: the scores do not train under RigL, so the last
            # task's scores would give exactly its mask, all held, and nothing to rewire
            with torch.no_grad():
                for layer in self.model.masked_layers().values():
                    nn.init.kaiming_uniform_(layer.score, a=math.sqrt(5))

    def eval_mode(self, task: int) -> MaskMode:
        return MaskMode("scores", self.density)

    def phases(self, task: int) -> Iterable[Phase]:
        layers = self.model.masked_layers().values()
        state = dict(self.model.named_parameters())
        own = [state[n] for n in self.model.task_param_names(task) if n in state]
        groups: list[dict] = [
            {"params": [m.weight for m in layers], "weight_decay": 0.0},
            {"params": [m.score for m in layers], "weight_decay": 0.0},
            {"params": own},
        ]
        phase = Phase("train", groups, self.eval_mode(task), frozen=self.frozen)
        return [phase] if self.rigl is None else self.rewired(phase)

    def rewired(self, phase: Phase) -> Iterator[Phase]:
        """``phase`` with RigL rewiring the mask (its scores frozen; see ``_rigl``)."""
        assert self.rigl is not None
        epochs = self.train_cfg.epochs if phase.epochs is None else phase.epochs
        self._rigl_epochs = epochs
        # planned steps: set by select_examples once the epoch's example count is known
        with self.rigl.phase(self.consolidated, 0):
            yield phase

    def select_examples(self, task: int, epoch: int, n: int) -> torch.Tensor | None:
        if self.rigl is not None and self.rigl.active and epoch == 0:
            self.rigl.plan(self._rigl_epochs, n, self.train_cfg.batch_size)
        return None

    def after_step(self, task: int) -> None:
        if self.rigl is not None:
            self.rigl.after_step()

    def end_task(self, task: int) -> TaskMasks:
        mask, own, shared = {}, {}, {}
        for name, layer in self.model.masked_layers().items():
            m = topc_mask(layer.score, self.density)
            mask[name] = m
            own[name] = m & ~self.consolidated[name]
            shared[name] = m & self.consolidated[name]
            self.consolidated[name] |= m
        self.masks.append(mask)
        return TaskMasks(mask, own, shared, self.task_stats())

    def after_commit(self, task: int, store: PackedStore) -> None:
        if len(self.masks) < task:  # resumed: the earlier tasks' masks come from the store
            self.masks = [self.from_store(store.task_masks(t)) for t in range(task)]
        # what was committed (compression prunes)
        self.masks[task:] = [self.from_store(store.task_masks(task))]
        self.load_store_state(self.from_store(store.union_mask()),
                              self.from_store(store.current_values()),
                              self.from_store(store.used_bits()))

    def load_store_state(self, held: dict[str, torch.Tensor], values: dict[str, torch.Tensor],
                         used_bits: dict[str, torch.Tensor] | None = None) -> None:
        """Align the live model with the store: ``held`` marks positions that hold a code,
        ``values`` the latest code's value there. The live weights take the stored values, so a
        later task shares exactly what was stored."""
        with torch.no_grad():
            for name, layer in self.model.masked_layers().items():
                layer.weight.copy_(torch.where(held[name], values[name], layer.weight))
                self.consolidated[name] = held[name].clone()
        self.frozen = self.consolidated

    def task_stats(self) -> dict[str, float]:
        """What ``end_task`` reports: capacity, and RigL's rewiring when ``mask: rigl``."""
        rigl = {} if self.rigl is None else self.rigl.stats()
        return self.capacity_stats() | rigl

    def capacity_stats(self) -> dict[str, float]:
        total = sum(m.numel() for m in self.consolidated.values())
        used = sum(int(m.sum()) for m in self.consolidated.values())
        return {"union_density": used / total}

    def snapshot(self, task: int) -> dict[str, torch.Tensor]:
        """The live view of an ended task (tests and debugging; runs evaluate from the store)."""
        return masked_snapshot(self.model, self.masks, task)


register_method("wsn", WSNMethod, WSN)
