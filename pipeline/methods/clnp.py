"""CLNP, Continual Learning via Neural Pruning (Golkar, Kagan & Cho, 2019); see docs/methods.md.

Units (hidden neurons) are *active* (they belong to an earlier task: their incoming links are
frozen) or *free*. Task t trains the whole network with cross-entropy plus an L1 penalty
(``l1_on: activations``: the free units' post-ReLU outputs; ``weights``: the trainable links);
links into active units get zero gradient, so the links from free into active units, which are
0, stay 0. After training (best validation state restored) each unit's mean activation over the
task's training data is measured, and a threshold theta is raised through the 0, Delta, 2 Delta,
... quantiles of the free units' mean activations: the task keeps the free units above theta,
everything else is cut, and the threshold goes up while the validation accuracy of the cut
network stays >= the uncut network's minus ``margin`` (the
paper's graceful forgetting; ``margin: 0`` prunes only what costs nothing on validation). The
kept units join the active set; the links into them from active units are the task's own
weights; links from free into active units are set to 0 and stay there; every link into a free
unit is re-initialised (Kaiming normal, fan-out) for the next task. The task's head reads only
active units (its other columns are 0). A task's mask is every link among units active after it,
so later tasks reuse all earlier units (``reuse_only``).

Diagnostics per task (``method/*`` metrics): free, new, active units per layer, earlier units
reused by the task's new units or head, the threshold chosen and the validation accuracy before
and after pruning.

Deviations from the paper: MLPs only (no conv filters); layers have no bias (a unit's bias is
what would make a cut unit non-zero); one threshold for all layers (the NISPA repository's
baseline; the paper allows one per layer); theta runs through quantiles of the free units'
mean activations, not multiples of a fixed step; one head per task instead of one masked output
layer; taskpack's lr schedule. Unlike that baseline, which picks the threshold on test data, the
sweep here reads the validation split only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import PipelineError
from pipeline.evaluation import evaluate_snapshot
from pipeline.methods._base import MaskMode, Method, Phase, TaskMasks
from pipeline.methods._registry import register_method
from pipeline.methods._units import (
    check_unit_model,
    head_name,
    kaiming_fan_out,
    mean_activations,
    relu_after,
    source_units,
    task_head,
    unit_flags,
)
from pipeline.models import ContinualNet
from pipeline.recipe import CLNPMethod, Recipe

if TYPE_CHECKING:
    from pipeline.data import Task
    from pipeline.store import PackedStore

__all__ = ["CLNP", "link_mask", "threshold_grid"]

log = logging.getLogger(__name__)

_ACTIVE = "active/"  # state_dict keys: active/<layer>


def link_mask(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The links of a linear weight from the units ``cols`` into the units ``rows``."""
    return rows[:, None] & cols[None, :]


def threshold_grid(acts: Mapping[str, torch.Tensor], active: Mapping[str, torch.Tensor],
                   step: float, most: int) -> list[float]:
    """The thresholds the sweep raises: the 0, step, 2 step, ... quantiles of the free units'
    mean activations (all layers pooled; at most ``most``, ending at the largest). Quantiles,
    not multiples of a fixed step, so the grid follows the activations' scale, which the L1
    weight sets."""
    free = torch.cat([acts[n][~a] for n, a in active.items()]).sort().values
    if free.numel() == 0:
        return []
    last = free.numel() - 1
    picks = sorted({min(round(j * step * free.numel()), last)
                    for j in range(math.ceil(1 / step) + 1)})
    return [float(free[k]) for k in picks[:most]]


class CLNP(Method):
    cfg: CLNPMethod
    end_task_repeatable = False  # end_task changes the weights: a second call repeats it

    def __init__(self, model: ContinualNet, cfg: CLNPMethod,
                 recipe: Recipe | None = None) -> None:
        super().__init__(model, cfg, recipe)
        check_unit_model(model, recipe, "clnp")
        layers = model.masked_layers()
        self.active = unit_flags(model)
        self.held = {n: torch.zeros_like(m.weight, dtype=torch.bool) for n, m in layers.items()}
        self.data: Task | None = None
        self.done = 0
        self._acts: dict[str, torch.Tensor] = {}
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    def _gen(self, task: int) -> torch.Generator:
        seed = self.recipe.train.seed if self.recipe is not None else 0
        return torch.Generator().manual_seed(seed * 1_000_003 + 104_729 + task)

    def setup(self) -> None:
        """Start from the initialisation every later free unit gets (Kaiming normal, fan-out)."""
        gen = self._gen(-1)
        with torch.no_grad():
            for layer in self.model.masked_layers().values():
                layer.weight.copy_(kaiming_fan_out(layer.weight.shape, gen))

    # ---- training ---------------------------------------------------------------------------
    def begin_task(self, task: int, store: PackedStore | None = None,
                   data: Task | None = None) -> None:
        done = self.done if store is None else store.num_tasks
        if task != done:
            raise ValueError(f"tasks must come in order: expected {done}, got {task}")
        self.data = data
        self._remove_hooks()
        if self.cfg.l1 > 0 and self.cfg.l1_on == "activations":
            for name, relu in relu_after(self.model).items():
                self._hooks.append(relu.register_forward_hook(self._keep_activation(name)))

    def _keep_activation(self, name: str):  # noqa: ANN202 - a forward hook
        def hook(_m: nn.Module, _i: object, out: torch.Tensor) -> None:
            if self.model.training and torch.is_grad_enabled():
                self._acts[name] = out
        return hook

    def _remove_hooks(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks, self._acts = [], {}

    def phases(self, task: int) -> Iterable[Phase]:
        state = dict(self.model.named_parameters())
        own = [state[n] for n in self.model.task_param_names(task) if n in state]
        weights = [m.weight for m in self.model.masked_layers().values()]
        return [Phase("train", [{"params": weights, "weight_decay": 0.0}, {"params": own}],
                      MaskMode("dense"))]

    def loss(self, task: int, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(logits, y)
        if self.cfg.l1 == 0:
            return loss
        penalty = logits.new_zeros(())
        if self.cfg.l1_on == "activations":
            for name, out in self._acts.items():
                penalty = penalty + out[:, ~self.active[name]].abs().sum(1).mean()
            self._acts = {}
        else:
            for name, layer in self.model.masked_layers().items():
                penalty = penalty + layer.weight[~self.active[name]].abs().sum()
        return loss + self.cfg.l1 * penalty

    def after_backward(self, task: int) -> None:
        for name, layer in self.model.masked_layers().items():
            if layer.weight.grad is not None:
                layer.weight.grad[self.active[name]] = 0.0

    # ---- pruning ----------------------------------------------------------------------------
    def _snapshot(self, task: int, units: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The task as it would be with only ``units`` kept: links among them, head on them."""
        layers = self.model.masked_layers()
        src = source_units(self.model, units)
        snap = {f"{n}.weight": m.weight.detach() * link_mask(units[n], src[n])
                for n, m in layers.items()}
        head = task_head(self.model, task)
        snap[f"heads.{task}.weight"] = head.weight.detach() * units[head_name(self.model)]
        if head.bias is not None:
            snap[f"heads.{task}.bias"] = head.bias.detach()
        return snap

    def sweep(self, task: int, data: Task) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
        """The units task ``task`` keeps: the highest threshold whose cut network stays within
        ``margin`` of the uncut one on validation data."""
        if len(data.val) == 0:
            raise PipelineError(f"clnp: task {task} has no validation examples to choose its "
                                "pruning threshold on; raise benchmark.val_fraction")
        bs = self.recipe.train.eval_batch_size if self.recipe is not None else 256
        acts = mean_activations(self.model, task, data.train.x, bs)
        every = {n: torch.ones_like(a) for n, a in self.active.items()}
        base = evaluate_snapshot(self.model, self._snapshot(task, every), task, data.val, bs)[0]
        chosen, acc_chosen, theta_chosen, tried = every, base, -1.0, 0
        for theta in threshold_grid(acts, self.active, self.cfg.threshold_step,
                                    self.cfg.max_thresholds):
            cand = {n: a | (acts[n] > theta) for n, a in self.active.items()}
            if all(torch.equal(cand[n], chosen[n]) for n in cand):
                continue  # nothing new cut at this threshold
            acc = evaluate_snapshot(self.model, self._snapshot(task, cand), task, data.val,
                                    bs)[0]
            tried += 1
            if acc < base - self.cfg.margin:
                break
            chosen, acc_chosen, theta_chosen = cand, acc, theta
            if all(torch.equal(c, self.active[n]) for n, c in cand.items()):
                break  # no new unit left
        return chosen, {"val_acc_unpruned": base, "val_acc_pruned": acc_chosen,
                        "prune_drop": base - acc_chosen, "threshold": theta_chosen,
                        "thresholds_tried": float(tried)}

    def end_task(self, task: int) -> TaskMasks:
        self._remove_hooks()
        if self.data is None:
            raise ValueError(f"clnp: task {task} needs its data (begin_task(task, store, data))")
        units, stats = self.sweep(task, self.data)
        layers = self.model.masked_layers()
        old_src = source_units(self.model, self.active)
        src = source_units(self.model, units)
        mask, own, shared = {}, {}, {}
        gen = self._gen(task)
        last = head_name(self.model)
        head = task_head(self.model, task).weight
        with torch.no_grad():
            for name, layer in layers.items():
                new = units[name] & ~self.active[name]
                mask[name] = self.held[name] | link_mask(new, src[name])
                own[name] = mask[name] & ~self.held[name]
                shared[name] = self.held[name].clone()
                w = layer.weight
                # reuse: earlier units of the previous layer that feed a new unit
                if name != next(iter(layers)):
                    fed = (w[new] != 0).any(0) & old_src[name]
                    stats[f"reused_units.{_prev(layers, name)}"] = float(fed.sum())
                fresh = kaiming_fan_out(w.shape, gen).to(w.device)
                kept = units[name][:, None]
                w.copy_(torch.where(kept, torch.where(mask[name], w, 0.0), fresh))
                stats[f"new_units.{name}"] = float(new.sum())
                stats[f"active_units.{name}"] = float(units[name].sum())
                stats[f"free_units.{name}"] = float((~units[name]).sum())
            fed = (head[:, self.active[last]] != 0).any(0)
            stats[f"reused_units.{last}"] = float(fed.sum())
            head[:, ~units[last]] = 0.0
        self.active = {n: u.clone() for n, u in units.items()}
        self.held = {n: m.clone() for n, m in mask.items()}
        self.done = task + 1
        self.data = None
        total = sum(m.numel() for m in self.held.values())
        stats["union_density"] = sum(int(m.sum()) for m in self.held.values()) / total
        log.info("task %d: threshold %.3g keeps %s new units (free left %s); validation "
                 "%.2f%% -> %.2f%%", task, stats["threshold"],
                 [int(stats[f"new_units.{n}"]) for n in layers],
                 [int(stats[f"free_units.{n}"]) for n in layers],
                 stats["val_acc_unpruned"], stats["val_acc_pruned"])
        return TaskMasks(mask, own, shared, stats)

    # ---- store and resume -------------------------------------------------------------------
    def after_commit(self, task: int, store: PackedStore) -> None:
        """Active rows take exactly what the store holds (0 where it holds nothing). A method
        built fresh on a store (a search worker) takes its active units from the store."""
        self.done = task + 1
        held = self.from_store(store.union_mask())
        values = self.from_store(store.current_values())
        with torch.no_grad():
            for name, layer in self.model.masked_layers().items():
                self.active[name] = self.active[name] | held[name].any(1)
                rows = self.active[name][:, None]
                layer.weight.copy_(torch.where(rows, torch.where(held[name], values[name], 0.0),
                                               layer.weight))
                self.held[name] = held[name]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{_ACTIVE}{n}": a for n, a in self.active.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in self.from_store(state).items():
            if key.startswith(_ACTIVE):
                self.active[key.removeprefix(_ACTIVE)] = value.bool()


def _prev(layers: Mapping[str, object], name: str) -> str:
    names = list(layers)
    return names[names.index(name) - 1]


register_method("clnp", CLNPMethod, CLNP)
