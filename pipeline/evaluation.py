"""Evaluation from committed state; the accuracy matrix with ACC, BWT, FWT (docs/methods.md)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.func import functional_call

from pipeline.data import Split
from pipeline.models import ContinualNet
from pipeline.store import PackedStore


def committed_snapshot(store: PackedStore, task: int) -> dict[str, torch.Tensor]:
    """The task's tensors rebuilt from the store, keyed like the model's state dict."""
    out = store.materialize(task)
    return {(f"{k}.weight" if k in store.layers else k): v for k, v in out.items()}


@torch.no_grad()
def snapshot_logits(model: ContinualNet, snapshot: dict[str, torch.Tensor], task: int,
                    x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Logits of ``task`` computed only from its committed tensors, in fixed batches.

    Masked layers run in ``dense`` mode with the snapshot's (already masked) weights swapped in,
    so nothing the live model holds for later tasks can leak in. Batches are fixed because BN
    with batch statistics makes outputs depend on the batch.
    """
    prunable = {f"{n}.weight" for n in model.masked_layers()}
    missing = prunable - snapshot.keys()
    if missing:
        raise ValueError(f"snapshot of task {task} lacks prunable weights {sorted(missing)}")
    snapshot = {k: v.to(x.device) for k, v in snapshot.items()}  # the store is host memory
    was_training = model.training
    model.eval()
    model.set_mode("dense")
    try:
        outs = [functional_call(model, snapshot, (x[i:i + batch_size],), {"task": task},
                                strict=False)
                for i in range(0, len(x), batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outs)


@torch.no_grad()
def evaluate_snapshot(model: ContinualNet, snapshot: dict[str, torch.Tensor], task: int,
                      split: Split, batch_size: int) -> tuple[float, float]:
    """(accuracy in %, mean cross-entropy) of a committed task on a split."""
    logits = snapshot_logits(model, snapshot, task, split.x, batch_size)
    return _acc_loss(logits, split.y)


@torch.no_grad()
def evaluate_live(model: ContinualNet, task: int, split: Split,
                  batch_size: int) -> tuple[float, float]:
    """(accuracy %, loss) of the model as it is now (e.g. masks from scores during training)."""
    was_training = model.training
    model.eval()
    try:
        logits = torch.cat([model(split.x[i:i + batch_size], task)
                            for i in range(0, len(split), batch_size)])
    finally:
        model.train(was_training)
    return _acc_loss(logits, split.y)


def _acc_loss(logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    if len(y) == 0:
        return math.nan, math.nan
    acc = 100.0 * (logits.argmax(1) == y).double().mean().item()
    return acc, F.cross_entropy(logits, y).item()


Row = list[float | None]  # None: a task not re-tested in that row (``evaluation.every``)


def row_mean(values: Row) -> float:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else math.nan


@dataclass
class AccuracyMatrix:
    """R[i][j] = test accuracy (%) on task j after learning task i, re-measured every time.

    ``before[j]`` is task j's accuracy just before it is trained (its head fresh), and
    ``baseline[j]`` that of the randomly initialised model; FWT is GEM's definition with them.

    With ``evaluation.every: k`` only every k-th row (and the last) re-tests every earlier task;
    the other rows hold the new task alone (R[i][i]) and ``None`` before it. ACC is the mean of
    the final row and BWT compares the final row with the diagonal, both of which are always
    measured, so they are the same figures a run with ``every: 1`` would report.
    ``inferred`` holds, under ``evaluation.scenario: task_inferred``, the task-inference
    accuracy (%) in the same layout (empty otherwise).
    """

    rows: list[Row] = field(default_factory=list)
    before: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)
    inferred: list[Row] = field(default_factory=list)

    def add_row(self, accs: Row, inferred: Row | None = None) -> None:
        if len(accs) != len(self.rows) + 1:
            raise ValueError(f"row {len(self.rows)} needs {len(self.rows) + 1} entries, "
                             f"got {len(accs)}")
        if accs[-1] is None:
            raise ValueError(f"row {len(self.rows)} must measure its own task (the diagonal)")
        self.rows.append(list(accs))
        if inferred is not None:
            self.inferred.append(list(inferred))

    @property
    def final(self) -> Row:
        return self.rows[-1] if self.rows else []

    def complete(self, i: int) -> bool:
        """Whether row ``i`` re-tested every task learned so far."""
        return all(v is not None for v in self.rows[i])

    def acc(self) -> float:
        return row_mean(self.final) if self.rows else math.nan

    def task_inference_acc(self) -> float:
        """Mean task-inference accuracy of the final row (NaN when the task was given)."""
        return row_mean(self.inferred[-1]) if self.inferred else math.nan

    def bwt(self) -> float:
        t = len(self.rows)
        if t < 2:
            return 0.0
        final = self.rows[-1]
        diffs = [f - d for j in range(t - 1)
                 if (f := final[j]) is not None and (d := self.rows[j][j]) is not None]
        return sum(diffs) / len(diffs) if diffs else math.nan

    def fwt(self) -> float:
        t = len(self.rows)
        if t < 2 or len(self.before) < t or len(self.baseline) < t:
            return math.nan
        return sum(self.before[j] - self.baseline[j] for j in range(1, t)) / (t - 1)

    def as_list(self) -> list[Row]:
        t = len(self.rows)
        return [row + [None] * (t - len(row)) for row in self.rows]

    def inferred_as_list(self) -> list[Row]:
        t = len(self.inferred)
        return [row + [None] * (t - len(row)) for row in self.inferred]
