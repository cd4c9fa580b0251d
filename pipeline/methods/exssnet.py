"""ExSSNeT (Yadav & Bansal, Findings of ACL 2023) with optional KKT; see docs/methods.md.

Per task, two phases. ``mask``: the weights are frozen and the task learns its own scores (fresh
Kaiming-uniform scores per task, as SupSup; or, with ``kkt``, a copy of an earlier task's) with
the top-c straight-through mask. ``weights``: the scores are frozen, the task runs through its mask
m_t, and only the weights in its exclusive set E_t = m_t minus M_{t-1} (in its mask, used by no
earlier task) train, with no weight decay and a fresh optimizer. The task's own values are the
E_t weights, committed as trained (fp32); it reads earlier tasks' weights where its mask reuses
them. The next task learns its mask on the updated weights (forward transfer).

KKT (k-nearest-neighbour knowledge transfer), before task t >= 1 trains: take a seeded sample of
``ceil(kkt_fraction x batches) + 1`` training batches of task t; for every earlier task i compute
the features the backbone gives them under task i's committed mask (and BN), read from the store;
fit a k-NN classifier (Euclidean, ``kkt_k`` neighbours) on the first 66% and score it on the
rest. If the best accuracy beats chance, task t's scores start as a copy of that task's scores.

Deviations from the paper: per-task heads (a dense Linear per task that trains in both phases)
instead of one masked classifier; taskpack's plateau lr schedule instead of cosine; the backbone
starts as SupSup's signed constants (``signed_constant``) but is then trained on E_t as the paper
does.

With ``mask: rigl`` the weight phase rewires E_t as RigL does (``pipeline.methods._rigl``): every
few steps the smallest exclusive weights leave the mask and as many free positions (in no earlier
task) with the largest dense gradient join it at weight 0; the mask phase is unchanged.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from pipeline.evaluation import committed_snapshot, snapshot_logits
from pipeline.methods._base import MaskMode, Phase, TaskMasks
from pipeline.methods._registry import register_method
from pipeline.methods.wsn import WSN
from pipeline.models import ContinualNet, topc_mask
from pipeline.recipe import ExSSNeTMethod, Recipe

if TYPE_CHECKING:
    from pipeline.data import Task
    from pipeline.store import PackedStore

__all__ = ["ExSSNeT", "knn_accuracy"]

log = logging.getLogger(__name__)

_SCORES = "scores/"  # state_dict keys: scores/<task>/<layer>


def knn_accuracy(features: torch.Tensor, labels: torch.Tensor, k: int,
                 fit_fraction: float = 0.66) -> float:
    """Accuracy (%) of a k-NN classifier (Euclidean, majority vote, ties to the smaller label)
    fitted on the first ``fit_fraction`` of the rows and tested on the rest."""
    n_fit = max(1, min(len(labels) - 1, round(fit_fraction * len(labels))))
    ref, query = features[:n_fit], features[n_fit:]
    k = min(k, n_fit)
    near = torch.cdist(query, ref).topk(k, largest=False).indices
    classes = int(labels.max()) + 1
    votes = nn.functional.one_hot(labels[:n_fit][near], classes).sum(1)
    return 100.0 * (votes.argmax(1) == labels[n_fit:]).double().mean().item()


def _features(model: ContinualNet, snapshot: dict[str, torch.Tensor], task: int,
              x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """What the backbone gives ``x`` as task ``task`` committed it: the head's input."""
    feats: list[torch.Tensor] = []
    hook = model.output_layer(task).register_forward_pre_hook(
        lambda _m, args: feats.append(args[0]))
    try:
        snapshot_logits(model, snapshot, task, x, batch_size)
    finally:
        hook.remove()
    return torch.cat(feats)


class ExSSNeT(WSN):
    cfg: ExSSNeTMethod

    def __init__(self, model: ContinualNet, cfg: ExSSNeTMethod,
                 recipe: Recipe | None = None) -> None:
        super().__init__(model, cfg, recipe)  # type: ignore[arg-type]
        self.task_scores: list[dict[str, torch.Tensor]] = []  # kept for KKT only
        self.stats: dict[str, float] = {}

    def setup(self) -> None:
        if not self.cfg.signed_constant:
            return
        gain = nn.init.calculate_gain("relu")
        with torch.no_grad():
            for layer in self.model.masked_layers().values():
                fan_in = layer.weight[0].numel()
                layer.weight.copy_(layer.weight.sign() * (gain / math.sqrt(fan_in)))

    def begin_task(self, task: int, store: PackedStore | None = None,
                   data: Task | None = None) -> None:
        super().begin_task(task, store, data)
        self.stats = {}
        with torch.no_grad():  # every task learns its own scores, from a fresh start
            for layer in self.model.masked_layers().values():
                nn.init.kaiming_uniform_(layer.score, a=math.sqrt(5))
        if self.cfg.kkt and task > 0 and store is not None and data is not None:
            self.transfer(task, store, data)

    def transfer(self, task: int, store: PackedStore, data: Task) -> int | None:
        """KKT: copy the scores of the earlier task whose committed mask gives the best k-NN
        accuracy on a sample of ``data``; returns that task, or None when none beats chance."""
        batch = self.recipe.train.batch_size if self.recipe is not None else 64
        eval_batch = self.recipe.train.eval_batch_size if self.recipe is not None else 256
        seed = self.recipe.train.seed if self.recipe is not None else 0
        n_train = len(data.train)
        n = min(n_train, (math.ceil(self.cfg.kkt_fraction * math.ceil(n_train / batch)) + 1)
                * batch)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + task)
        idx = torch.randperm(n_train, generator=gen)[:n].to(data.train.y.device)
        x, y = data.train.x[idx], data.train.y[idx]
        accs = []
        for i in range(task):
            feats = _features(self.model, committed_snapshot(store, i), i, x, eval_batch)
            accs.append(knn_accuracy(feats.flatten(1).float(), y, self.cfg.kkt_k))
        best = max(range(task), key=lambda i: (accs[i], -i))
        chance = 100.0 / data.num_classes
        source = best if accs[best] > chance else None
        self.stats = {"kkt_source": float(-1 if source is None else source),
                      **{f"kkt_acc_task_{i}": a for i, a in enumerate(accs)}}
        if source is None:
            log.info("task %d: KKT found no earlier mask better than chance; fresh scores", task)
        else:
            log.info("task %d: KKT starts from task %d's scores (best k-NN accuracy of %d "
                     "earlier masks)", task, source, task)
        log.debug("task %d: KKT k-NN accuracy per earlier task: %s", task, accs)
        if source is not None:
            with torch.no_grad():
                for name, layer in self.model.masked_layers().items():
                    layer.score.copy_(self.task_scores[source][name])
        return source

    def phases(self, task: int) -> Iterator[Phase]:
        layers = self.model.masked_layers()
        state = dict(self.model.named_parameters())
        own = [state[n] for n in self.model.task_param_names(task) if n in state]
        weights = [m.weight for m in layers.values()]
        scores = [m.score for m in layers.values()]
        for w in weights:  # frozen in the mask phase: no weight gradient to compute
            w.requires_grad_(False)
        try:
            yield Phase("mask", [{"params": scores, "weight_decay": 0.0}, {"params": own}],
                        MaskMode("scores", self.density), epochs=self.cfg.mask_epochs)
        finally:
            for w in weights:
                w.requires_grad_(True)
        if self.cfg.weight_epochs == 0:
            return
        if self.rigl is not None:  # the scores carry the mask RigL rewires (and restores)
            yield from self.rewired(Phase(
                "weights", [{"params": weights, "weight_decay": 0.0},
                            {"params": scores, "weight_decay": 0.0}, {"params": own}],
                MaskMode("scores", self.density), epochs=self.cfg.weight_epochs,
                frozen=self.frozen))
            return
        masks = {n: topc_mask(m.score, self.density) for n, m in layers.items()}
        yield Phase("weights", [{"params": weights, "weight_decay": 0.0}, {"params": own}],
                    MaskMode("mask", masks=masks), epochs=self.cfg.weight_epochs,
                    frozen=self.frozen)

    def end_task(self, task: int) -> TaskMasks:
        masks = super().end_task(task)
        if self.cfg.kkt:
            self.task_scores.append({n: m.score.detach().clone()
                                     for n, m in self.model.masked_layers().items()})
        masks.stats |= self.stats
        return masks

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{_SCORES}{t}/{n}": s for t, scores in enumerate(self.task_scores)
                for n, s in scores.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        by_task: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            if key.startswith(_SCORES):
                t, name = key.removeprefix(_SCORES).split("/", 1)
                by_task.setdefault(int(t), {})[name] = value
        self.task_scores = [self.from_store(by_task[t]) for t in sorted(by_task)]


register_method("exssnet", ExSSNeTMethod, ExSSNeT)
