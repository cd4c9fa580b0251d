"""The per-task stages the runner strings together: train, commit, re-evaluate from the store."""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipeline.compress import Compressed, host_commit
from pipeline.data import Task
from pipeline.evaluation import Row, committed_snapshot, evaluate_live, evaluate_snapshot
from pipeline.progress import Bars
from pipeline.session import Session, TrainReport
from pipeline.task_inference import build_superposition, evaluate_inferred, objective
from pipeline.train import train_task

__all__ = ["baseline_accuracy", "commit_task", "retested", "stage_evaluate", "stage_train"]


def _seed_task(s: Session, task: int) -> None:
    torch.manual_seed(s.recipe.train.seed + 7919 * (task + 1))


def baseline_accuracy(s: Session, task: Task) -> float:
    """Accuracy of the randomly initialised model on ``task`` (GEM's b_j for FWT), run the way
    the method evaluates its live model."""
    _seed_task(s, task.index)
    while s.scratch.num_tasks <= task.index:
        s.scratch.add_task(task.num_classes)
    s.method.eval_mode(task.index).apply(s.scratch)
    return evaluate_live(s.scratch, task.index, task.test, s.recipe.train.eval_batch_size)[0]


def stage_train(s: Session, task: Task, bars: Bars,
                resume: Callable[[Session, int], bool] | None = None,
                ) -> tuple[TrainReport | None, float]:
    """Add the task's head, measure accuracy before training (FWT), train; unless ``resume``
    restores the task as trained by an interrupted run (the report is then None)."""
    _seed_task(s, task.index)
    s.model.add_task(task.num_classes)
    s.method.begin_task(task.index, s.store, task)
    s.method.eval_mode(task.index).apply(s.model)
    before = evaluate_live(s.model, task.index, task.test, s.recipe.train.eval_batch_size)[0]
    if resume is not None and resume(s, task.index):
        return None, before
    return train_task(s.method, task.index, task, s.recipe.train, bars, s.device), before


def commit_task(s: Session, task: Task, compressed: Compressed,
                tensors: dict[str, torch.Tensor]) -> None:
    """Write the task into the packed store (atomically; the file is complete or untouched)."""
    meta: dict[str, str | int | float | bool] = {
        "name": task.name, "num_classes": task.num_classes,
        **{k: float(v) for k, v in compressed.stats.items() if k.startswith("acc_")},
        **compressed.meta}
    s.store.commit(host_commit(task.index, compressed.layers, tensors, meta))


def retested(upto: int, total: int, every: int) -> list[int]:
    """The tasks the row after task ``upto`` re-tests: all of them after every ``every``-th
    task and after the last of ``total``; otherwise the new task alone."""
    if (upto + 1) % every == 0 or upto == total - 1:
        return list(range(upto + 1))
    return [upto]


def stage_evaluate(s: Session, upto: int) -> tuple[Row, Row | None]:
    """Re-test tasks <= ``upto`` from the store (which ones: ``retested``); never copy a
    number forward. Returns the accuracy row and, when the task is inferred
    (``evaluation.scenario: task_inferred``), the task-inference accuracy row; untested
    entries are None."""
    ev = s.recipe.evaluation
    bs = s.recipe.train.eval_batch_size
    tested = retested(upto, len(s.stream), ev.every)
    acc: dict[int, float] = {}
    if ev.scenario == "task_given":
        for j in tested:
            acc[j] = evaluate_snapshot(s.model, committed_snapshot(s.store, j), j, s.tests[j],
                                       bs)[0]
        return [acc.get(j) for j in range(upto + 1)], None
    # every committed task is a candidate, whichever tasks this row tests
    dev = s.device.device  # moved once: inference classifies batch by batch
    snaps = {j: {k: v.to(dev) for k, v in committed_snapshot(s.store, j).items()}
             for j in range(upto + 1)}
    sup = build_superposition(s.model, snaps).to(dev)
    inferred: dict[int, float] = {}
    fn = objective(ev.objective, s.model.shared_classes)
    for j in tested:
        acc[j], inferred[j] = evaluate_inferred(s.model, snaps, sup, j, s.tests[j], bs,
                                                ev.inference, ev.infer_per, fn)
    return ([acc.get(j) for j in range(upto + 1)], [inferred.get(j) for j in range(upto + 1)])
