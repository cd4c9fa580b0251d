"""SupSup (Supermasks in Superposition, Wortsman et al. NeurIPS 2020), task given (GG); see
docs/methods.md.

The backbone is fixed and random, never trained: every weight of layer l is +s_l or -s_l with
s_l = gain(ReLU) / sqrt(fan_in) (the "signed Kaiming constant"), the sign that of the model's
seeded initialisation. Before the first task it is written into the store's ``base`` section
(sign bits plus one scale per layer), and from then on it is read back from there, so a resumed
run or an export uses exactly the stored backbone. Per task, fresh Kaiming-uniform scores learn
a top-c mask of |score| per layer with a straight-through gradient; the task commits that mask
(every position shared with the base, none owned: zero own codes) plus its head and, when the
model has ``norm: per_task``, its own BN statistics and affine parameters.

Deviations from the paper: by default a dense head per task; SupSup's one masked classifier
shared by all tasks, with its superfluous outputs, is ``model.head: shared`` with
``model.head_outputs`` (docs/task-inference.md); one density for every layer (SupSup's
per-layer ``min(0.5, s (c_in + c_out) / (c_in c_out k_h k_w))`` is not offered) and no
threshold (score >= 0) mask; per-task BN, when used, is the
model's affine per-task BN rather than SupSup's non-affine one; taskpack's plateau lr schedule
instead of a fixed number of iterations or cosine. Task inference without a task id (One-Shot,
Binary) is not in this class: ``pipeline.task_inference`` runs it for every method.

Compression: the recipe's plan or the search prunes a task's mask (whole groups of the plan's
pattern, lowest |score| first), so a block pattern gives a mask the block-sparse kernels run;
quantization has nothing to do (no own values).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

from pipeline.errors import StoreError
from pipeline.methods._base import MaskMode, Method, Phase, TaskMasks, masked_snapshot
from pipeline.methods._registry import register_method
from pipeline.models import ContinualNet, topc_mask
from pipeline.recipe import Recipe, SupSupMethod

if TYPE_CHECKING:
    from pipeline.data import Task
    from pipeline.store import PackedStore

__all__ = ["SupSup", "signed_constant_"]


def signed_constant_(model: ContinualNet) -> None:
    """Turn every masked layer's weight into SupSup's signed Kaiming constant, in place: the
    sign of the current value times gain(ReLU) / sqrt(fan_in)."""
    gain = nn.init.calculate_gain("relu")
    with torch.no_grad():
        for layer in model.masked_layers().values():
            scale = gain / math.sqrt(layer.weight[0].numel())
            # a weight of exactly 0 (probability ~0) takes the + sign: no position may be 0
            layer.weight.copy_(torch.where(layer.weight < 0, -scale, scale))


class SupSup(Method):
    cfg: SupSupMethod

    def __init__(self, model: ContinualNet, cfg: SupSupMethod,
                 recipe: Recipe | None = None) -> None:
        super().__init__(model, cfg, recipe)
        self.density = cfg.density
        self.masks: list[dict[str, torch.Tensor]] = []

    def setup(self) -> None:
        signed_constant_(self.model)
        for layer in self.model.masked_layers().values():
            layer.weight.requires_grad_(False)  # never trained: no gradient to compute

    def begin_task(self, task: int, store: PackedStore | None = None,
                   data: Task | None = None) -> None:
        done = len(self.masks) if store is None else store.num_tasks
        if task != done:
            raise ValueError(f"tasks must come in order: expected {done}, got {task}")
        if store is not None:
            if not store.has_base:
                if store.num_tasks:
                    raise StoreError(f"{store.path} holds {store.num_tasks} task(s) but no fixed "
                                     "backbone (base): it was not written by supsup")
                store.set_base({n: m.weight.detach().cpu()
                                for n, m in self.model.masked_layers().items()})
            self._load_base(store)
        with torch.no_grad():  # every task learns its own scores, from a fresh start
            for layer in self.model.masked_layers().values():
                nn.init.kaiming_uniform_(layer.score, a=math.sqrt(5))

    def _load_base(self, store: PackedStore) -> None:
        """The live backbone becomes the stored one (the store is the reference)."""
        base = store.base_weights()
        if base is None:
            raise StoreError(f"{store.path} holds no fixed backbone (base): supsup needs one")
        base = self.from_store(base)
        with torch.no_grad():
            for name, layer in self.model.masked_layers().items():
                layer.weight.copy_(base[name])

    def eval_mode(self, task: int) -> MaskMode:
        return MaskMode("scores", self.density)

    def phases(self, task: int) -> Iterable[Phase]:
        state = dict(self.model.named_parameters())
        own = [state[n] for n in self.model.task_param_names(task) if n in state]
        scores = [m.score for m in self.model.masked_layers().values()]
        return [Phase("train", [{"params": scores, "weight_decay": 0.0}, {"params": own}],
                      self.eval_mode(task), optimizer=self.cfg.optimizer)]

    def end_task(self, task: int) -> TaskMasks:
        mask = {n: topc_mask(m.score, self.density)
                for n, m in self.model.masked_layers().items()}
        self.masks.append(mask)
        # every position the task reads is the base's: shared, none own
        return TaskMasks(mask, {n: torch.zeros_like(m) for n, m in mask.items()},
                         {n: m.clone() for n, m in mask.items()})

    def prune_scope(self, task: int, masks: TaskMasks) -> tuple[dict[str, torch.Tensor],
                                                                 dict[str, torch.Tensor] | None]:
        """Every position of the mask may go (it reads the base, which no task changes), the
        lowest |score| first: the order in which top-c would have dropped them."""
        return masks.mask, {n: m.score.detach().abs() for n, m in
                            self.model.masked_layers().items()}

    def after_commit(self, task: int, store: PackedStore) -> None:
        self._load_base(store)
        if len(self.masks) < task:  # resumed: the earlier tasks' masks come from the store
            self.masks = [self.from_store(store.task_masks(t)) for t in range(task)]
        self.masks[task:] = [self.from_store(store.task_masks(task))]

    def snapshot(self, task: int) -> dict[str, torch.Tensor]:
        """The live view of an ended task (tests and debugging; runs evaluate from the store)."""
        return masked_snapshot(self.model, self.masks, task)


register_method("supsup", SupSupMethod, SupSup)
