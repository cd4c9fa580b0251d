"""A task's tensors between training and commit: its layers as trained, its head and norms."""

from __future__ import annotations

import torch

from pipeline.compress._tsn import LayerResult
from pipeline.methods import Method, TaskMasks
from pipeline.models import ContinualNet
from pipeline.store import LayerCommit, TaskCommit

__all__ = ["host_commit", "layers_on_held_positions", "load_task_tensors", "task_tensors",
           "trained_layers"]


def host_commit(task: int, layers: dict[str, LayerResult], tensors: dict[str, torch.Tensor],
                meta: dict[str, str | int | float | bool] | None = None) -> TaskCommit:
    """What the store is given for a task. The store is host memory: this is where a task's
    tensors leave the training device (for a commit, and for the search's size estimates)."""
    def host(t: torch.Tensor) -> torch.Tensor:
        return t.detach().cpu()

    return TaskCommit(
        task=task,
        layers={n: LayerCommit(host(r.mask), host(r.own), r.bits, host(r.values),
                               None if r.codebook is None else host(r.codebook))
                for n, r in layers.items()},
        tensors={k: host(v) for k, v in tensors.items()},
        meta=meta or {})


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


def trained_layers(method: Method, task: int, masks: TaskMasks) -> dict[str, LayerResult]:
    """The task right after training: its masks and the live fp32 weights, per layer, with what
    the method lets pruning remove (``Method.prune_scope``)."""
    prunable, rank = method.prune_scope(task, masks)
    out = {}
    for n, m in method.model.masked_layers().items():
        scope = prunable[n] & masks.mask[n]
        out[n] = LayerResult(masks.mask[n].clone(), masks.own[n].clone(),
                             m.weight.detach().clone(), prunable_before=int(scope.sum()),
                             prunable=scope.clone(),
                             rank=None if rank is None else rank[n].detach().clone())
    return out


def layers_on_held_positions(layers: dict[str, LayerResult],
                             held: dict[str, torch.Tensor]) -> set[str]:
    """Layers with own values on positions earlier tasks hold (TSN's split): such a layer must
    quantize, since its own codes have to fit the free bits of those positions."""
    return {n for n, r in layers.items() if (r.own & held[n].to(r.own.device)).any()}
