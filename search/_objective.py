"""One trial: apply a sampled plan with the pipeline's own compression passes, then score it.

Scores: validation accuracy through the task's compressed subnetwork, latency measured on the
model compiled for the target (cached by the compiled structure), and the exact bytes the task
would add to the packed store. Constraint values go to Optuna via ``user_attrs``.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from compilers.errors import CompilerError
from pipeline.compress import (
    CompressContext,
    LayerResult,
    finetune_own,
    host_commit,
    layer_snapshot,
    prune,
    quantize,
)
from pipeline.errors import TaskpackError
from pipeline.recipe import LayerPlan
from pipeline.store import PackedStore, TaskCommit
from pipeline.subnet import task_module

log = logging.getLogger(__name__)

# errors a candidate can cause: a build or measurement that failed, a plan the passes reject, an
# out-of-memory (torch.OutOfMemoryError is a RuntimeError) or other failure while it fine-tunes
EXPECTED_FAILURES = (CompilerError, TaskpackError, RuntimeError, ValueError, MemoryError)


def failure_reason(exc: Exception) -> str:
    """The one-line reason a trial (or the dense reference) failed, for its user attrs and tags.
    Any exception fails only the candidate; one of a kind no candidate should cause is logged
    with its traceback too, since it is likely a bug rather than a property of the plan."""
    if not isinstance(exc, EXPECTED_FAILURES):
        log.warning("unexpected %s while running a candidate", type(exc).__name__, exc_info=exc)
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0] if first else ''}"[:500]


@dataclass(frozen=True)
class Latency:
    median_ms: float
    p90_ms: float
    tuned: bool = False
    cached: bool = False
    seconds: float = 0.0  # compile + tune + measure time charged to the budget
    workloads: int = 0  # dense workloads in the build that take a tuned schedule
    workloads_tuned: int = 0  # of those, how many were not in the tuning database yet
    threads: int = 0  # runtime threads the measurement ran with (0: not recorded)


LatencyFn = Callable[[nn.Module, torch.Tensor], Latency]


@dataclass
class TrialResult:
    plans: dict[str, LayerPlan]
    layers: dict[str, LayerResult]
    tensors: dict[str, torch.Tensor]
    accuracy: float
    latency: Latency
    nbytes: int
    seconds: float
    labels: dict[str, str] = field(default_factory=dict)  # layer -> speed-realizable/storage-only


def apply_plan(ctx: CompressContext, trained: dict[str, LayerResult],
               plans: dict[str, LayerPlan], finetune_epochs: float, lr: float,
               batch_size: int, seed: int, quant_fallback: tuple[int, ...] = (8,),
               required: set[str] | None = None) -> tuple[dict[str, LayerResult],
                                                          dict[str, torch.Tensor], float]:
    """What a trial does to a copy of the task as trained (``trained``, ``ctx``): prune by the
    plan without gating, fine-tune the own weights, quantize to the plan's widths (layers in
    ``required`` get ``quant_fallback`` if the plan keeps fp32). Returns (layers, task tensors,
    validation accuracy); ``ctx`` counts the evaluations."""
    layers = {n: r.clone() for n, r in trained.items()}
    trial = copy.copy(ctx)
    trial.task_tensors = {k: v.clone() for k, v in ctx.task_tensors.items()}
    trial.evaluations = 0
    prune(trial, layers, plans, delta=math.inf, steps=len(plans), step_fraction=1.0, gated=False)
    # nothing pruned (the dense reference): nothing to recover, the task stays as trained
    if finetune_epochs and any(p.sparsity > 0 for p in plans.values()):
        finetune_own(trial, layers, finetune_epochs, lr, batch_size, seed)
    acc = quantize(trial, layers, plans, list(quant_fallback), delta=math.inf, adaptive=False,
                   required=required)
    ctx.evaluations += trial.evaluations
    return layers, trial.task_tensors, acc


@dataclass
class TaskProblem:
    """Everything a trial of task ``ctx.task`` needs; built once per task."""

    ctx: CompressContext
    trained: dict[str, LayerResult]  # the task right after training (own/mask, fp32 values)
    store: PackedStore
    split_layers: set[str]
    reference_accuracy: float  # validation accuracy of the uncompressed task
    example: torch.Tensor  # one batch at the latency batch size
    latency_fn: LatencyFn
    finetune_epochs: float = 0
    lr: float = 1e-4
    batch_size: int = 128
    seed: int = 0
    quant_fallback: tuple[int, ...] = (8,)
    labels_fn: Callable[[dict[str, LayerPlan]], dict[str, str]] | None = None
    target: str = "the search target"  # where latency is measured, in words (charts)
    # tags of every trial's MLflow run (task, target, method), so the UI can group trials
    run_tags: dict[str, str] = field(default_factory=dict)

    def apply(self, plans: dict[str, LayerPlan]) -> tuple[dict[str, LayerResult],
                                                          dict[str, torch.Tensor], float]:
        """The task compressed by ``plans``: (layers, task tensors, validation accuracy)."""
        return apply_plan(self.ctx, self.trained, plans, self.finetune_epochs, self.lr,
                          self.batch_size, self.seed, self.quant_fallback, self.split_layers)

    def commit_of(self, layers: dict[str, LayerResult],
                  tensors: dict[str, torch.Tensor]) -> TaskCommit:
        return host_commit(self.ctx.task, layers, tensors)

    def module_of(self, layers: dict[str, LayerResult],
                  tensors: dict[str, torch.Tensor]) -> nn.Module:
        return task_module(self.ctx.model, layer_snapshot(layers, tensors), self.ctx.task)

    def run(self, plans: dict[str, LayerPlan]) -> TrialResult:
        start = time.perf_counter()
        layers, tensors, acc = self.apply(plans)
        nbytes = self.store.encoded_size(self.commit_of(layers, tensors))
        latency = self.latency_fn(self.module_of(layers, tensors), self.example)
        labels = self.labels_fn(plans) if self.labels_fn else {}
        return TrialResult(plans, layers, tensors, acc, latency, nbytes,
                           time.perf_counter() - start, labels)
