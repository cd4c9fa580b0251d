"""Running a recipe: the per-task stage sequence (DESIGN.md §1).

For every task: train -> end the task (fix its mask) -> compress (TSN) -> commit into the packed
store -> re-open the store from disk -> re-evaluate every task learned so far from weights rebuilt
from the file -> checkpoint -> track. Each stage is one function, so the search and the
compile/export stages slot in without touching the others.

A run lives in ``<output_dir>/<recipe name>/``. Re-running the same recipe continues after the last
committed task: the store holds the tasks, ``state.npz`` the live model (weights and scores) as
it was right after that commit, and ``progress.json`` the accuracy rows measured so far.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.data import Split, Stream, Task, build_stream
from pipeline.errors import InputError, RecipeError
from pipeline.evaluation import AccuracyMatrix, evaluate_live, evaluate_snapshot
from pipeline.methods import ContinualMethod, TaskMasks, build_method
from pipeline.models import ContinualNet, build_model, model_fingerprint
from pipeline.progress import QUIET, Bars
from pipeline.recipe import Recipe, flatten, load_recipe, recipe_to_dict, recipe_to_yaml
from pipeline.report import write_artifacts
from pipeline.stages import commit_task, compress_task, task_tensors
from pipeline.state import load_state, save_state
from pipeline.store import PackedStore
from pipeline.tracking import NoopTracker, Run, Tracker
from pipeline.train import TrainReport, train_task

log = logging.getLogger(__name__)

# (session, task, masks, bars, task run) -> (compressed layers, stats). The default is TSN's
# adaptive compression; the CLI injects the Optuna search when ``search.enabled``.
CompressFn = Callable[..., tuple[dict, dict[str, float]]]


@dataclass
class TaskRecord:
    index: int
    name: str
    train: TrainReport | None
    masks: TaskMasks | None
    acc_at_commit: float
    val_acc: float
    compression: dict[str, float] = field(default_factory=dict)


@dataclass
class RunResult:
    recipe: Recipe
    run_dir: Path
    matrix: AccuracyMatrix
    tasks: list[TaskRecord] = field(default_factory=list)
    wall_s: float = 0.0
    # wall seconds of the earlier, interrupted part of a resumed run (from progress.json)
    prior_wall_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    run_id: str = ""
    where: str = ""
    store_path: Path | None = None
    resumed_from: int = 0
    store_metrics: dict[str, float] = field(default_factory=dict)

    def elapsed(self) -> float:
        """Wall seconds of the whole run so far, interrupted parts of a resumed run included."""
        return self.prior_wall_s + time.perf_counter() - self.started

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
    store: PackedStore
    run_dir: Path
    tests: list[Split] = field(default_factory=list)
    compress: CompressFn | None = None


def run_dir_for(recipe: Recipe) -> Path:
    return recipe.output_dir / recipe.name


def same_recipe(saved: Path, recipe: Recipe) -> bool:
    """Whether the recipe a run folder saved is ``recipe``. Compared after reading the saved file
    through today's schema, so a field added since (at its default) does not orphan the run; a
    field since removed or renamed makes it a different recipe."""
    try:
        old = load_recipe(saved)
    except RecipeError:
        return False
    return recipe_to_dict(old) == recipe_to_dict(recipe)


def prepare(recipe: Recipe, fresh: bool = False) -> _Session:
    """Build stream, model, method and store; seeded so two runs of one recipe are identical."""
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    stream = build_stream(recipe.benchmark)
    torch.manual_seed(recipe.train.seed)
    model = build_model(recipe.model, stream.input_shape)
    torch.manual_seed(recipe.train.seed)
    scratch = build_model(recipe.model, stream.input_shape)
    method = build_method(recipe.method, model, recipe.store.bit_budget)
    run_dir = run_dir_for(recipe)
    store_path = recipe.store.path or run_dir / "store.tpk"
    resolved = recipe_to_yaml(recipe)
    if fresh:
        shutil.rmtree(run_dir, ignore_errors=True)
        store_path.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    previous = run_dir / "recipe.yaml"
    if store_path.exists() and previous.exists() and not same_recipe(previous, recipe):
        raise InputError(f"{run_dir} holds a run of a different recipe; re-run with --fresh to "
                         "start over, or set output_dir / name to keep both")
    fingerprint = model_fingerprint(recipe.model, stream.input_shape)
    if store_path.exists():
        store = PackedStore.open(store_path, expect_fingerprint=fingerprint)
    else:
        store = PackedStore.create(store_path, model.layer_shapes(), fingerprint,
                                   recipe.store.bit_budget)
    previous.write_text(resolved)
    return _Session(recipe, stream, model, method, scratch, store, run_dir)


def baseline_accuracy(s: _Session, task: Task) -> float:
    """Accuracy of the randomly initialised model on ``task`` (GEM's b_j for FWT)."""
    torch.manual_seed(s.recipe.train.seed + 7919 * (task.index + 1))
    while s.scratch.num_tasks <= task.index:
        s.scratch.add_task(task.num_classes)
    s.scratch.set_mode("scores", density=s.recipe.method.density)
    return evaluate_live(s.scratch, task.index, task.test, s.recipe.train.eval_batch_size)[0]


def stage_train(s: _Session, task: Task, bars: Bars) -> tuple[TrainReport, float]:
    """Add the task's head, measure accuracy before training (FWT), train."""
    torch.manual_seed(s.recipe.train.seed + 7919 * (task.index + 1))
    s.model.add_task(task.num_classes)
    s.method.begin_task(task.index)
    before = evaluate_live(s.model, task.index, task.test, s.recipe.train.eval_batch_size)[0]
    return train_task(s.method, task.index, task, s.recipe.train, bars), before


def committed_snapshot(store: PackedStore, task: int) -> dict[str, torch.Tensor]:
    """The task's tensors rebuilt from the store, keyed like the model's state dict."""
    out = store.materialize(task)
    return {(f"{k}.weight" if k in store.layers else k): v for k, v in out.items()}


def stage_evaluate(s: _Session, upto: int) -> list[float]:
    """Re-test every task <= ``upto`` from the store; never copy a number forward."""
    bs = s.recipe.train.eval_batch_size
    return [evaluate_snapshot(s.model, committed_snapshot(s.store, j), j, s.tests[j], bs)[0]
            for j in range(upto + 1)]


def task_metrics(rec: TaskRecord, row: list[float], before: float, baseline: float) -> dict:
    out = {"acc_at_commit": rec.acc_at_commit, "val_acc": rec.val_acc,
           "acc_before_training": before, "acc_random_init": baseline,
           "mean_acc_so_far": sum(row) / len(row), **rec.compression}
    if rec.train is not None:
        out |= {"epochs": rec.train.epochs, "best_epoch": rec.train.best_epoch,
                "train_seconds": rec.train.seconds, "final_lr": rec.train.final_lr}
    return out


def run_recipe(recipe: Recipe, tracker: Tracker | None = None, bars: Bars = QUIET,
               fresh: bool = False, compress: CompressFn | None = None) -> RunResult:
    """Run (or continue) every task of the recipe; the parent run ends KILLED on Ctrl-C."""
    tracker = tracker or NoopTracker()
    start = time.perf_counter()
    s = prepare(recipe, fresh)
    s.compress = compress
    result = RunResult(recipe, s.run_dir, AccuracyMatrix(), where=tracker.where(),
                       store_path=s.store.path, started=start)
    resumed = load_state(s, result)
    result.resumed_from = resumed
    tags = {"taskpack.stream": recipe.benchmark.stream, "taskpack.method": recipe.method.kind}
    if resumed:
        tags["taskpack.resumed_after_task"] = str(resumed - 1)
    parent = tracker.start(recipe.name, tags=tags)
    result.run_id = parent.run_id
    try:
        parent.log_params(flatten(recipe_to_dict(recipe)))
        parent.log_artifact(s.run_dir / "recipe.yaml")
        _run_tasks(s, result, parent, bars, resumed)
        result.wall_s = result.elapsed()
        _finish(s, result, parent)
    except KeyboardInterrupt:
        parent.end("KILLED")
        raise
    except BaseException:
        parent.end("FAILED")
        raise
    parent.end("FINISHED")
    return result


def _finish(s: _Session, result: RunResult, parent: Run) -> None:
    report = s.store.report()
    result.store_metrics = report.as_metrics()
    summary = {"acc": result.acc, "bwt": result.bwt, "fwt": result.matrix.fwt(),
               "wall_seconds": result.wall_s, **report.as_metrics()}
    (s.run_dir / "results.json").write_text(json.dumps(
        {"summary": summary, "matrix": result.matrix.as_list(),
         "tasks": [r.name for r in result.tasks], "resumed_from_task": result.resumed_from},
        indent=2))
    from pipeline.store import format_report

    (s.run_dir / "store_report.txt").write_text(format_report(report))
    parent.log_metrics(summary)
    for path in write_artifacts(result, s.run_dir):
        parent.log_artifact(path)
    for name in ("results.json", "store_report.txt"):
        parent.log_artifact(s.run_dir / name)
    parent.log_artifact(s.store.path, "store")


def _run_tasks(s: _Session, result: RunResult, parent: Run, bars: Bars, first: int) -> None:
    n = len(s.stream)
    with bars.bar("tasks", n, keep=True) as tbar:
        bars.advance(tbar, first)
        for t in range(first, n):
            name, _ = s.stream.task_info(t)
            child = parent.child(f"task-{t}", tags={"taskpack.task": str(t),
                                                    "taskpack.task_name": name})
            try:
                row = _one_task(s, t, name, result, child, bars)
            except KeyboardInterrupt:
                child.end("KILLED")
                raise
            except BaseException:
                child.end("FAILED")
                raise
            child.end("FINISHED")
            parent.log_metrics({"acc_mean_so_far": sum(row) / len(row)}, step=t)
            bars.advance(tbar, info=f"acc {row[-1]:.2f}%  mean {sum(row) / len(row):.2f}%")


def _one_task(s: _Session, t: int, name: str, result: RunResult, child: Run,
              bars: Bars) -> list[float]:
    task = s.stream.load(t)
    s.tests.append(task.test)
    baseline = baseline_accuracy(s, task)
    report, before = stage_train(s, task, bars)
    masks = s.method.end_task(t)
    layers, stats = (s.compress or compress_task)(s, task, masks, bars, child)
    commit_task(s, task, layers, task_tensors(s.model, t), stats)
    # every evaluation from here on runs on weights rebuilt from the file on disk
    s.store = PackedStore.open(s.store.path, expect_fingerprint=s.store.model_fingerprint)
    snap = committed_snapshot(s.store, t)
    bs = s.recipe.train.eval_batch_size
    acc_commit = evaluate_snapshot(s.model, snap, t, task.test, bs)[0]
    val_acc = evaluate_snapshot(s.model, snap, t, task.val, bs)[0]
    row = stage_evaluate(s, t)
    rec = TaskRecord(t, name, report, masks, acc_commit, val_acc, stats)
    result.tasks.append(rec)
    result.matrix.add_row(row)
    result.matrix.before.append(before)
    result.matrix.baseline.append(baseline)
    save_state(s, result)
    child.log_metrics(task_metrics(rec, row, before, baseline))
    child.log_metrics({f"acc_task_{j}": a for j, a in enumerate(row)})
    child.log_metrics(s.store.report().as_metrics())
    return row
