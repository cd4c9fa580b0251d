"""PackNet (Mallya & Lazebnik, CVPR 2018); see docs/methods.md.

Per task, two phases. ``train``: every weight no earlier task holds is the task's own and trains
(the held ones take part in the forward pass with zero gradient). Then, per layer, the
``prune_fraction`` of the task's own weights with the smallest magnitude is pruned: those
positions go back to the free pool and are set to exactly 0. ``retrain``: the survivors are
retrained with the pruned positions out of the forward pass. The task's mask is everything earlier
tasks hold plus its survivors (later tasks use every earlier weight: ``reuse_only``); its own
values are committed as trained (fp32), so the compression passes are not used.

Deviations from the paper: no ImageNet-pretrained first task (task 0 trains from scratch and is
pruned like every other task); one head per task as every taskpack method; layers have no bias,
and per-task BatchNorm (``model.norm: per_task``) trains with its task instead of staying frozen.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from pipeline.errors import RecipeError
from pipeline.methods._base import MaskMode, Method, Phase, TaskMasks
from pipeline.methods._registry import register_method
from pipeline.models import ContinualNet
from pipeline.recipe import PackNetMethod, Recipe, match_layers

if TYPE_CHECKING:
    from pipeline.data import Task
    from pipeline.store import PackedStore

__all__ = ["PackNet", "layer_fractions", "prune_smallest"]


def layer_fractions(cfg: PackNetMethod, layer_names: list[str]) -> dict[str, float]:
    """The prune fraction of every layer: one value for all, or resolved from the mapping."""
    if not isinstance(cfg.prune_fraction, dict):
        return dict.fromkeys(layer_names, cfg.prune_fraction)
    keys = list(cfg.prune_fraction)
    chosen, unused = match_layers(keys, layer_names)
    if unused:
        raise RecipeError(f"method.prune_fraction.{keys[unused[0]]}: matches no layer; layers "
                          f"are {layer_names}")
    missing = [n for n, i in chosen.items() if i is None]
    if missing:
        raise RecipeError(f"method.prune_fraction: no entry matches layers {missing}; add one "
                          "(e.g. '.*' for the rest)")
    return {n: cfg.prune_fraction[keys[i]] for n, i in chosen.items() if i is not None}


def prune_smallest(weight: torch.Tensor, own: torch.Tensor, fraction: float) -> torch.Tensor:
    """The survivors among ``own`` after removing exactly ``round(fraction * |own|)`` positions
    with the smallest |weight| (ties broken by position, so the count is exact)."""
    idx = own.flatten().nonzero().squeeze(1)
    drop = round(fraction * idx.numel())
    keep = own.clone()
    if drop:
        order = torch.argsort(weight.detach().flatten()[idx].abs(), stable=True)
        keep.view(-1)[idx[order[:drop]]] = False
    return keep


class PackNet(Method):
    cfg: PackNetMethod
    end_task_repeatable = False  # end_task changes the weights: a second call repeats it

    def __init__(self, model: ContinualNet, cfg: PackNetMethod,
                 recipe: Recipe | None = None) -> None:
        super().__init__(model, cfg, recipe)
        layers = model.masked_layers()
        self.fractions = layer_fractions(cfg, list(layers))
        # positions earlier tasks hold (M_{t-1}): frozen, and in every later task's mask
        self.held = {n: torch.zeros_like(m.weight, dtype=torch.bool) for n, m in layers.items()}
        self.survivors: dict[str, torch.Tensor] = {}
        self.done = 0  # tasks ended

    def begin_task(self, task: int, store: PackedStore | None = None,
                   data: Task | None = None) -> None:
        done = self.done if store is None else store.num_tasks
        if task != done:
            raise ValueError(f"tasks must come in order: expected {done}, got {task}")
        self.survivors = {}

    def phases(self, task: int) -> Iterator[Phase]:
        layers = self.model.masked_layers()
        state = dict(self.model.named_parameters())
        own_tensors = [state[n] for n in self.model.task_param_names(task) if n in state]

        def groups() -> list[dict]:  # fresh dicts per phase: an optimizer writes its lr in them
            return [{"params": [m.weight for m in layers.values()], "weight_decay": 0.0},
                    {"params": own_tensors}]

        yield Phase("train", groups(), MaskMode("dense"), frozen=self.held)
        self.prune(task)
        pruned = any(self.fractions[n] > 0 for n in layers)
        epochs = self.cfg.retrain_epochs
        if pruned and epochs != 0:
            lr = None if self.recipe is None else self.recipe.train.lr * self.cfg.retrain_lr_scale
            keep = {n: self.held[n] | self.survivors[n] for n in layers}
            yield Phase("retrain", groups(), MaskMode("mask", masks=keep), epochs=epochs, lr=lr,
                        frozen=self.held)

    def prune(self, task: int) -> None:
        """Prune the task's own weights per layer by magnitude; pruned weights become 0."""
        with torch.no_grad():
            for name, layer in self.model.masked_layers().items():
                own = ~self.held[name]
                keep = prune_smallest(layer.weight, own, self.fractions[name])
                layer.weight.masked_fill_(own & ~keep, 0.0)
                self.survivors[name] = keep

    def end_task(self, task: int) -> TaskMasks:
        if not self.survivors:  # phases were not run to the end
            raise RuntimeError(f"task {task} ended before its weights were pruned")
        mask, own, shared = {}, {}, {}
        for name in self.held:
            own[name] = self.survivors[name]
            shared[name] = self.held[name].clone()
            mask[name] = own[name] | shared[name]
            self.held[name] = mask[name].clone()
        self.done = task + 1
        return TaskMasks(mask, own, shared, self.capacity_stats())

    def after_commit(self, task: int, store: PackedStore) -> None:
        self.done = task + 1
        held = self.from_store(store.union_mask())
        values = self.from_store(store.current_values())
        with torch.no_grad():
            for name, layer in self.model.masked_layers().items():
                layer.weight.copy_(torch.where(held[name], values[name], layer.weight))
                self.held[name] = held[name]

    def capacity_stats(self) -> dict[str, float]:
        total = sum(m.numel() for m in self.held.values())
        used = sum(int(m.sum()) for m in self.held.values())
        return {"union_density": used / total}


register_method("packnet", PackNetMethod, PackNet)
