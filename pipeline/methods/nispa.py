"""NISPA, Neuro-Inspired Stability-Plasticity Adaptation (Gurbuz & Dovrolis, ICML 2022); see
docs/methods.md.

Every masked layer keeps exactly ``round(density x size)`` links (its connectivity), chosen at
random once. Units (hidden neurons) are *stable* (they belong to an earlier task: links into
them are frozen) or *plastic*; inputs are always stable. A task trains in phases i = 1, 2, ...
of ``phase_epochs`` epochs each (fresh optimizer, best validation state restored). After phase i:

1. its validation accuracy a_i is measured; from phase 3 on, a_i < best - ``margin`` ends the
   task with the state of phase i-1 (the last accepted one);
2. p_i = (1 + cos(pi i / k)) / 2; p_i <= ``min_p`` ends the task with the state of phase i;
3. per layer, the units carrying the first p_i of the layer's total mean activation (largest
   first, over the task's training data) become candidates; the working stable set is the
   earlier stable units plus the candidates;
4. every link from a plastic unit into a working-stable unit is dropped (for good), each plastic
   unit left without outgoing links gets one link to a random plastic unit of the next layer, and
   the rest of the dropped budget regrows at random among absent links into plastic units, drawn
   from a normal with the mean and std of the layer's non-zero weights: the density stays exact;
5. the head reads only working-stable units of the last layer.

Ending a task: its working-stable units become stable; its mask is every link into a stable
unit (its sources are stable, by step 4), so later tasks reuse all earlier paths
(``reuse_only``); links into plastic units are re-initialised (Kaiming normal, fan-out). Links
the compression passes prune from the task's own links leave the connectivity and regrow into
plastic units, so the density stays exact across tasks.

Deviations from the paper: MLPs only (no conv kernels); layers have no bias; one head per task
(reading stable units) instead of one output layer with class masks; taskpack's plateau lr
schedule inside each phase; accuracies and stopping use the validation split only (as the
paper). When a layer has no room left for the dropped links (almost every unit stable), they
are lost and ``method/density_shortfall.<layer>`` counts them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from pipeline.errors import PipelineError
from pipeline.evaluation import evaluate_live
from pipeline.methods._base import MaskMode, Method, Phase, TaskMasks
from pipeline.methods._registry import register_method
from pipeline.methods._units import (
    check_unit_model,
    head_name,
    kaiming_fan_out,
    mean_activations,
    source_units,
    task_head,
    unit_flags,
)
from pipeline.methods.clnp import link_mask
from pipeline.models import ContinualNet
from pipeline.recipe import NISPAMethod, Recipe

if TYPE_CHECKING:
    from pipeline.data import Task
    from pipeline.store import PackedStore

__all__ = ["NISPA", "phase_share", "top_share"]

log = logging.getLogger(__name__)

_STABLE, _CONN = "stable/", "conn/"  # state_dict keys


def phase_share(i: int, k: int) -> float:
    """p_i = (1 + cos(pi i / k)) / 2: the activation share phase i promotes."""
    return 0.5 * (1.0 + math.cos(math.pi * i / k))


def top_share(acts: torch.Tensor, p: float) -> torch.Tensor:
    """The fewest units, largest activation first (ties by position), whose summed activation
    reaches ``p`` of the total; none when the layer is silent."""
    out = torch.zeros_like(acts, dtype=torch.bool)
    total = float(acts.sum())
    if total <= 0 or p <= 0:
        return out
    order = torch.argsort(acts, descending=True, stable=True)
    reached = torch.cumsum(acts[order].double(), 0) >= p * total - 1e-12 * total
    count = int(reached.nonzero()[0]) + 1 if reached.any() else len(acts)
    out[order[:count]] = True
    return out


@dataclass
class _PhaseState:
    """What reverting to an accepted phase restores."""

    weights: dict[str, torch.Tensor]
    head: dict[str, torch.Tensor]
    conn: dict[str, torch.Tensor]
    working: dict[str, torch.Tensor]
    head_units: torch.Tensor | None


class NISPA(Method):
    cfg: NISPAMethod
    end_task_repeatable = False  # end_task changes the weights: a second call repeats it

    def __init__(self, model: ContinualNet, cfg: NISPAMethod,
                 recipe: Recipe | None = None) -> None:
        super().__init__(model, cfg, recipe)
        check_unit_model(model, recipe, "nispa")
        layers = model.masked_layers()
        self.budget = {n: round(cfg.density * m.weight.numel()) for n, m in layers.items()}
        self.conn = {n: torch.zeros_like(m.weight, dtype=torch.bool) for n, m in layers.items()}
        self.stable = unit_flags(model)
        self.held = {n: torch.zeros_like(c) for n, c in self.conn.items()}
        self.working = {n: s.clone() for n, s in self.stable.items()}
        self.head_units: torch.Tensor | None = None  # units the current head may read
        self.data: Task | None = None
        self.done = 0
        self.stats: dict[str, float] = {}

    def _gen(self, task: int, salt: int) -> torch.Generator:
        seed = self.recipe.train.seed if self.recipe is not None else 0
        return torch.Generator().manual_seed(seed * 1_000_003 + 7_919 * salt + task + 1)

    def setup(self) -> None:
        """Random connectivity of exactly ``budget`` links per layer, Kaiming-normal values."""
        gen = self._gen(-1, 1)
        with torch.no_grad():
            for name, layer in self.model.masked_layers().items():
                w = layer.weight
                pick = torch.randperm(w.numel(), generator=gen)[:self.budget[name]]
                conn = torch.zeros(w.numel(), dtype=torch.bool)
                conn[pick] = True
                self.conn[name] = conn.view_as(w).to(w.device)
                w.copy_(kaiming_fan_out(w.shape, gen).to(w.device) * self.conn[name])

    # ---- training ---------------------------------------------------------------------------
    def begin_task(self, task: int, store: PackedStore | None = None,
                   data: Task | None = None) -> None:
        done = self.done if store is None else store.num_tasks
        if task != done:
            raise ValueError(f"tasks must come in order: expected {done}, got {task}")
        self.data = data
        self.working = {n: s.clone() for n, s in self.stable.items()}
        self.head_units = None
        self.stats = {}

    def eval_mode(self, task: int) -> MaskMode:
        return MaskMode("mask", masks={n: c.clone() for n, c in self.conn.items()})

    def phases(self, task: int) -> Iterator[Phase]:
        if self.data is None:
            raise ValueError(f"nispa: task {task} needs its data (begin_task(task, store, data))")
        data, cfg = self.data, self.cfg
        if len(data.val) == 0:
            raise PipelineError(f"nispa: task {task} has no validation examples to stop its "
                                "phases on; raise benchmark.val_fraction")
        bs = self.recipe.train.eval_batch_size if self.recipe is not None else 256
        best, accepted, i, p = -math.inf, self._save(task), 0, 1.0
        while True:
            i += 1
            yield self._phase(task, i)
            self.eval_mode(task).apply(self.model)
            acc = evaluate_live(self.model, task, data.val, bs)[0]
            best = max(best, acc)
            if i > 2 and acc < best - cfg.margin:
                self._restore(task, accepted)  # the last accepted phase
                i -= 1
                break
            accepted = self._save(task)
            p = phase_share(i, cfg.k)
            if p <= cfg.min_p:
                break
            self.rewire(task, p, data, bs, i)
        self.stats |= {"phases_accepted": float(i), "p_at_stop": phase_share(i - 1, cfg.k),
                       "val_acc_best_phase": best}

    def _phase(self, task: int, i: int) -> Phase:
        state = dict(self.model.named_parameters())
        own = [state[n] for n in self.model.task_param_names(task) if n in state]
        weights = [m.weight for m in self.model.masked_layers().values()]
        return Phase(f"phase {i}", [{"params": weights, "weight_decay": 0.0}, {"params": own}],
                     self.eval_mode(task), epochs=self.cfg.phase_epochs)

    def after_backward(self, task: int) -> None:
        for name, layer in self.model.masked_layers().items():
            if layer.weight.grad is not None:
                layer.weight.grad[self.stable[name]] = 0.0
        head = task_head(self.model, task).weight
        if self.head_units is not None and head.grad is not None:
            head.grad[:, ~self.head_units] = 0.0

    # ---- rewiring ---------------------------------------------------------------------------
    def rewire(self, task: int, p: float, data: Task, batch_size: int, phase: int) -> None:
        """Promote the units carrying share ``p`` of the activation, drop plastic->stable links,
        regrow as many into plastic units."""
        acts = mean_activations(self.model, task, data.train.x, batch_size)
        self.working = {n: self.stable[n] | top_share(a, p) for n, a in acts.items()}
        src = source_units(self.model, self.working)
        gen = self._gen(task, 100 + phase)
        names = list(self.model.masked_layers())
        with torch.no_grad():
            for j, (name, layer) in enumerate(self.model.masked_layers().items()):
                drop = self.conn[name] & link_mask(self.working[name], ~src[name])
                self.conn[name] &= ~drop
                layer.weight[drop] = 0.0
                key = f"dropped_links.{name}"
                self.stats[key] = self.stats.get(key, 0.0) + float(drop.sum())
                if j > 0:  # plastic units of the previous layer left with no outgoing link
                    self._link_orphans(name, ~self.working[names[j - 1]], gen)
                self._regrow(name, gen)
            last = head_name(self.model)
            self.head_units = self.working[last].clone()
            task_head(self.model, task).weight[:, ~self.head_units] = 0.0

    def _link_orphans(self, name: str, plastic_src: torch.Tensor, gen: torch.Generator) -> None:
        conn, targets = self.conn[name], (~self.working[name]).nonzero().squeeze(1).cpu()
        orphans = (plastic_src & ~conn.any(0)).nonzero().squeeze(1).cpu()
        room = self.budget[name] - int(conn.sum())
        if len(targets) == 0 or room <= 0 or len(orphans) == 0:
            return
        orphans = orphans[:room]
        rows = targets[torch.randint(len(targets), (len(orphans),), generator=gen)]
        self._grow(name, rows * conn.shape[1] + orphans, gen)

    def _regrow(self, name: str, gen: torch.Generator) -> None:
        """Regrow the layer's missing links at random among absent links into plastic units."""
        conn = self.conn[name]
        room = self.budget[name] - int(conn.sum())
        if room <= 0:
            return
        free = (~conn & (~self.working[name])[:, None]).flatten().nonzero().squeeze(1).cpu()
        pick = free[torch.randperm(len(free), generator=gen)[:room]]
        short = room - len(pick)
        if short:
            key = f"density_shortfall.{name}"
            self.stats[key] = self.stats.get(key, 0.0) + short
        self._grow(name, pick, gen)

    def _grow(self, name: str, flat: torch.Tensor, gen: torch.Generator) -> None:
        w = self.model.masked_layers()[name].weight
        present = w[self.conn[name] & (w != 0)]
        mean = float(present.mean()) if present.numel() else 0.0
        std = float(present.std()) if present.numel() > 1 else (2.0 / w.shape[0]) ** 0.5
        values = torch.randn(len(flat), generator=gen) * std + mean
        flat = flat.to(w.device)
        w.view(-1)[flat] = values.to(w.device)
        self.conn[name].view(-1)[flat] = True

    # ---- phase snapshots --------------------------------------------------------------------
    def _save(self, task: int) -> _PhaseState:
        return _PhaseState(
            {n: m.weight.detach().clone() for n, m in self.model.masked_layers().items()},
            {k: v.detach().clone() for k, v in task_head(self.model, task).named_parameters()},
            {n: c.clone() for n, c in self.conn.items()},
            {n: c.clone() for n, c in self.working.items()},
            None if self.head_units is None else self.head_units.clone())

    def _restore(self, task: int, saved: _PhaseState) -> None:
        with torch.no_grad():
            for n, m in self.model.masked_layers().items():
                m.weight.copy_(saved.weights[n])
            for k, v in task_head(self.model, task).named_parameters():
                v.copy_(saved.head[k])
        self.conn, self.working, self.head_units = saved.conn, saved.working, saved.head_units

    # ---- ending a task ----------------------------------------------------------------------
    def end_task(self, task: int) -> TaskMasks:
        self.stable = {n: self.stable[n] | u for n, u in self.working.items()}
        src = source_units(self.model, self.stable)
        gen = self._gen(task, 2)
        mask, own, shared = {}, {}, {}
        with torch.no_grad():
            for name, layer in self.model.masked_layers().items():
                w, conn = layer.weight, self.conn[name]
                mask[name] = conn & link_mask(self.stable[name], src[name])
                own[name] = mask[name] & ~self.held[name]
                shared[name] = mask[name] & self.held[name]
                fresh = kaiming_fan_out(w.shape, gen).to(w.device) * conn
                w.copy_(torch.where(self.stable[name][:, None],
                                    torch.where(mask[name], w, 0.0), fresh))
                self.stats[f"stable_units.{name}"] = float(self.stable[name].sum())
                self.stats[f"plastic_units.{name}"] = float((~self.stable[name]).sum())
                self.stats[f"density.{name}"] = float(conn.sum()) / conn.numel()
            last = head_name(self.model)
            task_head(self.model, task).weight[:, ~self.stable[last]] = 0.0
        self.held = {n: m.clone() for n, m in mask.items()}
        self.working = {n: s.clone() for n, s in self.stable.items()}
        self.head_units, self.data, self.done = None, None, task + 1
        total = sum(m.numel() for m in self.held.values())
        stats = dict(self.stats)
        stats["union_density"] = sum(int(m.sum()) for m in self.held.values()) / total
        log.info("task %d: %d phase(s) accepted (p %.3f); stable units %s of %s", task,
                 int(stats.get("phases_accepted", 0)), stats.get("p_at_stop", math.nan),
                 [int(s.sum()) for s in self.stable.values()],
                 [len(s) for s in self.stable.values()])
        return TaskMasks(mask, own, shared, stats)

    # ---- store and resume -------------------------------------------------------------------
    def after_commit(self, task: int, store: PackedStore) -> None:
        """Stable rows take exactly what the store holds; own links the compression pruned leave
        the connectivity and regrow into plastic units (exact density again)."""
        self.done = task + 1
        held = self.from_store(store.union_mask())
        values = self.from_store(store.current_values())
        gen = self._gen(task, 3)
        with torch.no_grad():
            for name, layer in self.model.masked_layers().items():
                self.stable[name] = self.stable[name] | held[name].any(1)
                rows = self.stable[name][:, None]
                self.conn[name] = torch.where(rows, held[name], self.conn[name])
                layer.weight.copy_(torch.where(rows, torch.where(held[name], values[name], 0.0),
                                               layer.weight))
                self.held[name] = held[name]
            self.working = {n: s.clone() for n, s in self.stable.items()}
            for name in self.conn:
                self._regrow(name, gen)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return ({f"{_STABLE}{n}": s for n, s in self.stable.items()}
                | {f"{_CONN}{n}": c for n, c in self.conn.items()})

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for key, value in self.from_store(state).items():
            for prefix, target in ((_STABLE, self.stable), (_CONN, self.conn)):
                if key.startswith(prefix):
                    target[key.removeprefix(prefix)] = value.bool()


register_method("nispa", NISPAMethod, NISPA)
