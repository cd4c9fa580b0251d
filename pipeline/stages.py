"""The compress and commit stages of a task (used by the runner, later by the search)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pipeline.compress import (
    CompressContext,
    LayerResult,
    finetune_own,
    prune,
    quantize,
    summarize,
)
from pipeline.data import Task
from pipeline.methods import TSN, TaskMasks
from pipeline.models import ContinualNet
from pipeline.progress import Bars
from pipeline.recipe import plan_for_layers
from pipeline.store import LayerCommit, TaskCommit
from pipeline.tracking import Run

if TYPE_CHECKING:
    from pipeline.runner import _Session


def task_tensors(model: ContinualNet, task: int) -> dict[str, torch.Tensor]:
    """The task's own tensors (head, per-task norms), cloned, keyed like the state dict."""
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    return {n: state[n].detach().clone() for n in model.task_param_names(task)}


def load_task_tensors(model: ContinualNet, tensors: dict[str, torch.Tensor]) -> None:
    """Copy a task's tensors (head, per-task norms) into the live model."""
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    with torch.no_grad():
        for k, v in tensors.items():
            state[k].copy_(v)


def trained_layers(model: ContinualNet, masks: TaskMasks) -> dict[str, LayerResult]:
    """The task right after training: its masks and the live fp32 weights, per layer."""
    return {n: LayerResult(masks.mask[n].clone(), masks.own[n].clone(),
                           m.weight.detach().clone(), own_before=int(masks.own[n].sum()))
            for n, m in model.masked_layers().items()}


def compress_task(s: _Session, task: Task, masks: TaskMasks, bars: Bars,
                  run: Run | None = None) -> tuple[dict[str, LayerResult], dict[str, float]]:
    """TSN: prune, fine-tune, quantize the task's own weights. WSN: commit as trained (fp32)."""
    layers = trained_layers(s.model, masks)
    method = s.method
    if not isinstance(method, TSN):
        return layers, {}
    cfg, t = method.cfg, task.index
    plans = plan_for_layers(s.recipe.compression, list(layers))
    ctx = CompressContext(s.model, t, task_tensors(s.model, t), task,
                          s.recipe.train.eval_batch_size)
    acc_trained = ctx.accuracy(layers)
    acc_pruned = prune(ctx, layers, plans, cfg.prune.delta, cfg.prune.steps,
                       cfg.prune.step_fraction, bars)
    if cfg.prune.finetune_epochs and any(p.sparsity > 0 for p in plans.values()):
        finetune_own(ctx, layers, cfg.prune.finetune_epochs, s.recipe.train.lr / 10,
                     s.recipe.train.batch_size, s.recipe.train.seed + t)
        acc_pruned = ctx.accuracy(layers)
    # an own code placed on a held position must fit its free bits: such layers must quantize
    split_layers = {n for n, r in layers.items() if (r.own & method.consolidated[n]).any()}
    acc_q = quantize(ctx, layers, plans, cfg.quantize.bits, cfg.quantize.delta,
                     cfg.quantize.adaptive, required=split_layers, bars=bars)
    load_task_tensors(s.model, ctx.task_tensors)  # the live head takes what fine-tuning made
    method.finalize(t, {n: r.mask for n, r in layers.items()})
    stats = {"acc_val_trained": acc_trained, "acc_val_pruned": acc_pruned,
             "acc_val_quantized": acc_q, "compress_evaluations": ctx.evaluations,
             **summarize(layers)}
    return layers, stats


def commit_task(s: _Session, task: Task, layers: dict[str, LayerResult],
                tensors: dict[str, torch.Tensor], stats: dict[str, float]) -> None:
    """Write the task into the packed store, then align the live model with the store."""
    from pipeline.state import save_state_before_commit

    save_state_before_commit(s, task.index + 1)
    commit = TaskCommit(
        task=task.index,
        layers={n: LayerCommit(r.mask, r.own, r.bits, r.values, r.codebook)
                for n, r in layers.items()},
        tensors=tensors,
        meta={"name": task.name, "num_classes": task.num_classes,
              **{k: float(v) for k, v in stats.items() if k.startswith("acc_")}},
    )
    s.store.commit(commit)
    sync_with_store(s)


def sync_with_store(s: _Session) -> None:
    s.method.load_store_state(s.store.union_mask(), s.store.current_values(),
                              s.store.used_bits())
