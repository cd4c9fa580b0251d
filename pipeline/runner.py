"""Running a recipe: the per-task stage sequence (DESIGN.md §1).

For every task: train -> end the task (fix its mask) -> commit -> re-evaluate every task learned so
far from committed state -> track. Each stage is one function so later stages (compression search,
packed store, compile/export) slot in without touching the others.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch

from pipeline.data import Split, Stream, Task, build_stream
from pipeline.evaluation import AccuracyMatrix, evaluate_live, evaluate_snapshot
from pipeline.methods import ContinualMethod, TaskMasks, build_method
from pipeline.models import ContinualNet, build_model
from pipeline.progress import QUIET, Bars
from pipeline.recipe import Recipe, flatten, recipe_to_dict, recipe_to_yaml
from pipeline.report import write_artifacts
from pipeline.tracking import NoopTracker, Run, Tracker
from pipeline.train import TrainReport, train_task

log = logging.getLogger(__name__)


@dataclass
class TaskRecord:
    index: int
    name: str
    train: TrainReport
    masks: TaskMasks
    acc_at_commit: float
    val_acc: float


@dataclass
class RunResult:
    recipe: Recipe
    run_dir: Path
    matrix: AccuracyMatrix
    tasks: list[TaskRecord] = field(default_factory=list)
    wall_s: float = 0.0
    run_id: str = ""
    where: str = ""

    @property
    def acc(self) -> float:
        return self.matrix.acc()

    @property
    def bwt(self) -> float:
        return self.matrix.bwt()


@dataclass
class _Session:
    """Everything one run holds while it goes through its tasks."""

    recipe: Recipe
    stream: Stream
    model: ContinualNet
    method: ContinualMethod
    scratch: ContinualNet  # the untrained model, for FWT's random-init baseline
    tests: list[Split] = field(default_factory=list)


def prepare(recipe: Recipe) -> _Session:
    """Build stream, model and method; seeded so two runs of one recipe are identical."""
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    stream = build_stream(recipe.benchmark)
    torch.manual_seed(recipe.train.seed)
    model = build_model(recipe.model, stream.input_shape)
    torch.manual_seed(recipe.train.seed)
    scratch = build_model(recipe.model, stream.input_shape)
    return _Session(recipe, stream, model, build_method(recipe.method, model), scratch)


def make_run_dir(recipe: Recipe) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = recipe.output_dir / f"{recipe.name}-{stamp}"
    n = 1
    while run_dir.exists():
        run_dir, n = recipe.output_dir / f"{recipe.name}-{stamp}-{n}", n + 1
    run_dir.mkdir(parents=True)
    return run_dir


def baseline_accuracy(s: _Session, task: Task) -> float:
    """Accuracy of the randomly initialised model on ``task`` (GEM's b_j for FWT)."""
    torch.manual_seed(s.recipe.train.seed + 7919 * (task.index + 1))
    while s.scratch.num_tasks <= task.index:
        s.scratch.add_task(task.num_classes)
    density = getattr(s.recipe.method, "density", 1.0)
    s.scratch.set_mode("scores", density=density)
    return evaluate_live(s.scratch, task.index, task.test, s.recipe.train.eval_batch_size)[0]


def stage_train(s: _Session, task: Task, bars: Bars) -> tuple[TrainReport, float]:
    """Add the task's head, measure accuracy before training (FWT), train."""
    torch.manual_seed(s.recipe.train.seed + 7919 * (task.index + 1))
    s.model.add_task(task.num_classes)
    s.method.begin_task(task.index)
    before = evaluate_live(s.model, task.index, task.test, s.recipe.train.eval_batch_size)[0]
    return train_task(s.method, task.index, task, s.recipe.train, bars), before


def stage_commit(s: _Session, task: Task) -> tuple[TaskMasks, dict[str, torch.Tensor]]:
    """Fix the task's subnetwork and return its committed tensors."""
    masks = s.method.end_task(task.index)
    return masks, s.method.snapshot(task.index)


def stage_evaluate(s: _Session, upto: int) -> list[float]:
    """Re-test every task <= ``upto`` from committed state; never copy a number forward."""
    bs = s.recipe.train.eval_batch_size
    return [evaluate_snapshot(s.model, s.method.snapshot(j), j, s.tests[j], bs)[0]
            for j in range(upto + 1)]


def task_metrics(rec: TaskRecord, row: list[float], before: float, baseline: float) -> dict:
    m = rec.masks
    own = sum(int(v.sum()) for v in m.own.values())
    shared = sum(int(v.sum()) for v in m.shared.values())
    total = sum(v.numel() for v in m.mask.values())
    return {
        "acc_at_commit": rec.acc_at_commit, "val_acc": rec.val_acc,
        "acc_before_training": before, "acc_random_init": baseline,
        "epochs": rec.train.epochs, "best_epoch": rec.train.best_epoch,
        "train_seconds": rec.train.seconds, "final_lr": rec.train.final_lr,
        "density": (own + shared) / total, "own_weights": own, "shared_weights": shared,
        "mean_acc_so_far": sum(row) / len(row), **m.stats,
    }


def run_recipe(recipe: Recipe, tracker: Tracker | None = None, bars: Bars = QUIET) -> RunResult:
    """Run every task of the recipe; the parent run ends KILLED on Ctrl-C, FAILED on error."""
    tracker = tracker or NoopTracker()
    start = time.perf_counter()
    s = prepare(recipe)
    run_dir = make_run_dir(recipe)
    (run_dir / "recipe.yaml").write_text(recipe_to_yaml(recipe))
    parent = tracker.start(recipe.name, tags={"taskpack.stream": recipe.benchmark.stream,
                                              "taskpack.method": recipe.method.kind})
    result = RunResult(recipe, run_dir, AccuracyMatrix(), run_id=parent.run_id,
                       where=tracker.where())
    try:
        parent.log_params(flatten(recipe_to_dict(recipe)))
        parent.log_artifact(run_dir / "recipe.yaml")
        _run_tasks(s, result, parent, bars)
        result.wall_s = time.perf_counter() - start
        summary = {"acc": result.acc, "bwt": result.bwt, "fwt": result.matrix.fwt(),
                   "wall_seconds": result.wall_s, **s.method.capacity_stats()}
        (run_dir / "results.json").write_text(json.dumps(
            {"summary": summary, "matrix": result.matrix.as_list(),
             "tasks": [r.name for r in result.tasks]}, indent=2))
        parent.log_metrics(summary)
        for path in write_artifacts(result, run_dir):
            parent.log_artifact(path)
        parent.log_artifact(run_dir / "results.json")
    except KeyboardInterrupt:
        parent.end("KILLED")
        raise
    except BaseException:
        parent.end("FAILED")
        raise
    parent.end("FINISHED")
    return result


def _run_tasks(s: _Session, result: RunResult, parent: Run, bars: Bars) -> None:
    n = len(s.stream)
    with bars.bar("tasks", n, keep=True) as tbar:
        for t in range(n):
            name, _ = s.stream.task_info(t)
            child = parent.child(f"task-{t}", tags={"taskpack.task": str(t),
                                                    "taskpack.task_name": name})
            try:
                task = s.stream.load(t)
                s.tests.append(task.test)
                baseline = baseline_accuracy(s, task)
                report, before = stage_train(s, task, bars)
                masks, snap = stage_commit(s, task)
                bs = s.recipe.train.eval_batch_size
                acc_commit = evaluate_snapshot(s.model, snap, t, task.test, bs)[0]
                val_acc = evaluate_snapshot(s.model, snap, t, task.val, bs)[0]
                row = stage_evaluate(s, t)
                rec = TaskRecord(t, name, report, masks, acc_commit, val_acc)
                result.tasks.append(rec)
                result.matrix.add_row(row)
                result.matrix.before.append(before)
                result.matrix.baseline.append(baseline)
                child.log_metrics(task_metrics(rec, row, before, baseline))
                child.log_metrics({f"acc_task_{j}": a for j, a in enumerate(row)})
                parent.log_metrics({"acc_mean_so_far": sum(row) / len(row)}, step=t)
                del task
            except KeyboardInterrupt:
                child.end("KILLED")
                raise
            except BaseException:
                child.end("FAILED")
                raise
            child.end("FINISHED")
            bars.advance(tbar, info=f"acc {row[-1]:.2f}%  mean {sum(row) / len(row):.2f}%")
