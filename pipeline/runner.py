"""Running a recipe: the per-task stage sequence (docs/architecture.md).

For every task: train (the method's phases) -> end the task (fix its masks) -> compress (the
``Compressor``: the recipe's plan, or the search) -> commit into the packed store -> re-open the
store from disk -> the method reads it back -> re-evaluate every task learned so far from weights
rebuilt from the file -> checkpoint -> track. The stages live in ``pipeline.stages``; the values
they pass around in ``pipeline.session``.

A run lives in ``<output_dir>/<recipe name>/``. Re-running the same recipe continues after the last
committed task: the store holds the tasks, ``state-<k>.npz`` the live model (weights and scores)
as it was right before that commit, and ``progress.json`` the accuracy rows measured so far.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from pipeline.compress import Compressor, PlanCompressor, task_tensors
from pipeline.data import build_stream
from pipeline.device import apply_settings, resolve_device
from pipeline.errors import InputError, RecipeError
from pipeline.evaluation import (
    AccuracyMatrix,
    Row,
    committed_snapshot,
    evaluate_snapshot,
    row_mean,
)
from pipeline.methods import build_method
from pipeline.models import build_model, model_fingerprint
from pipeline.progress import QUIET, Bars
from pipeline.recipe import Recipe, flatten, load_recipe, recipe_to_dict, recipe_to_yaml
from pipeline.report import write_artifacts
from pipeline.run_report import write_report
from pipeline.rundir import prepare_run_dir
from pipeline.session import RunResult, Session, TaskContext, TaskRecord
from pipeline.stages import baseline_accuracy, commit_task, stage_evaluate, stage_train
from pipeline.state import load_state, save_state, save_state_before_commit
from pipeline.store import PackedStore, format_report
from pipeline.store_spec import build_spec
from pipeline.tracking import NoopTracker, Run, Tracker

__all__ = ["head_classes", "prepare", "run_dir_for", "run_recipe", "same_recipe"]

log = logging.getLogger(__name__)


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


def prepare(recipe: Recipe, fresh: bool = False) -> Session:
    """Build stream, model, method and store; seeded so two runs of one recipe are identical."""
    dev = resolve_device(recipe.train)
    apply_settings(dev)
    stream = build_stream(recipe.benchmark)
    # built on the CPU (the same initial weights whatever the device), then moved; the method
    # is built after the move, so its masks and scores live beside the weights
    classes = head_classes(recipe, [stream.task_info(t)[1] for t in range(len(stream))])
    torch.manual_seed(recipe.train.seed)
    model = build_model(recipe.model, stream.input_shape, classes).to(dev.device)
    torch.manual_seed(recipe.train.seed)
    scratch = build_model(recipe.model, stream.input_shape, classes).to(dev.device)
    method = build_method(model, recipe)
    run_dir = run_dir_for(recipe)
    store_path = recipe.store.path or run_dir / "store.tpk"
    resolved = recipe_to_yaml(recipe)
    prepare_run_dir(run_dir, recipe.output_dir, store_path, fresh)  # --fresh, marker, temp files
    previous = run_dir / "recipe.yaml"
    if store_path.exists() and previous.exists() and not same_recipe(previous, recipe):
        raise InputError(f"{run_dir} holds a run of a different recipe; re-run with --fresh to "
                         "start over, or set output_dir / name to keep both")
    fingerprint = model_fingerprint(recipe.model, stream.input_shape)
    if store_path.exists():
        store = PackedStore.open(store_path, expect_fingerprint=fingerprint)
    else:
        store = PackedStore.create(store_path, model.layer_shapes(), fingerprint,
                                   recipe.store.bit_budget, spec=build_spec(recipe, stream))
    previous.write_text(resolved)
    return Session(recipe, stream, model, method, scratch, store, run_dir, dev)


def head_classes(recipe: Recipe, counts: list[int]) -> int | None:
    """The class count of a shared head (None with per-task heads). A shared head, and
    evaluation without a task id, need every task of the stream to have the same count."""
    needs = [why for why, on in (("model.head: shared", recipe.model.head == "shared"),
                                 ("evaluation.scenario: task_inferred",
                                  recipe.evaluation.scenario == "task_inferred")) if on]
    if needs and len(set(counts)) > 1:
        raise RecipeError(f"{needs[0]} needs every task to have the same class count, but the "
                          f"stream's tasks have {sorted(set(counts))} classes")
    return counts[0] if recipe.model.head == "shared" and counts else None


def task_metrics(rec: TaskRecord, row: Row, before: float, baseline: float,
                 inferred: Row | None = None) -> dict:
    out = {"acc_at_commit": rec.acc_at_commit, "val_acc": rec.val_acc,
           "acc_before_training": before, "acc_random_init": baseline, **rec.compression,
           **{f"method/{k}": v for k, v in (rec.masks.stats if rec.masks else {}).items()}}
    if rec.train is not None:
        out |= {"epochs": rec.train.epochs, "best_epoch": rec.train.best_epoch,
                "train_seconds": rec.train.seconds, "final_lr": rec.train.final_lr,
                **{f"train/{k}": v for k, v in rec.train.stats.items()}}
    if all(a is not None for a in row):  # a row that re-tested every task (evaluation.every)
        out["mean_acc_so_far"] = row_mean(row)
    out |= {f"acc_task_{j}": a for j, a in enumerate(row) if a is not None}
    if inferred is not None:
        out |= {f"task_inference_acc_task_{j}": a for j, a in enumerate(inferred)
                if a is not None}
        if all(a is not None for a in inferred):
            out["mean_task_inference_acc_so_far"] = row_mean(inferred)
    return out


def run_recipe(recipe: Recipe, tracker: Tracker | None = None, bars: Bars = QUIET,
               fresh: bool = False, compressor: Compressor | None = None) -> RunResult:
    """Run (or continue) every task of the recipe; the parent run ends KILLED on Ctrl-C.

    ``compressor`` turns each trained task into what is committed (default: the recipe's plan
    through the method's compression passes, ``PlanCompressor``).
    """
    tracker = tracker or NoopTracker()
    compressor = compressor or PlanCompressor()
    start = time.perf_counter()
    s = prepare(recipe, fresh)
    result = RunResult(recipe, s.run_dir, AccuracyMatrix(), where=tracker.where(),
                       store_path=s.store.path, started=start)
    resumed = load_state(s, result)
    result.resumed_from = resumed
    log.info("training on %s", s.device.describe())
    tags = {"taskpack.stream": recipe.benchmark.stream, "taskpack.method": recipe.method.kind,
            "taskpack.train_device": s.device.describe()}
    if resumed:
        tags["taskpack.resumed_after_task"] = str(resumed - 1)
    parent = tracker.start(recipe.name, tags=tags)
    result.run_id = parent.run_id
    try:
        parent.log_params(flatten(recipe_to_dict(recipe)))
        parent.log_artifact(s.run_dir / "recipe.yaml")
        _run_tasks(s, result, parent, bars, resumed, compressor)
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


def _finish(s: Session, result: RunResult, parent: Run) -> None:
    report = s.store.report()
    result.store_metrics = report.as_metrics()
    summary = {"acc": result.acc, "bwt": result.bwt, "fwt": result.matrix.fwt(),
               "wall_seconds": result.wall_s, **report.as_metrics()}
    extra: dict = {}
    if result.matrix.inferred:
        summary["task_inference_acc"] = result.matrix.task_inference_acc()
        extra["task_inference_matrix"] = result.matrix.inferred_as_list()
    (s.run_dir / "results.json").write_text(json.dumps(
        {"summary": summary, "matrix": result.matrix.as_list(), **extra,
         "scenario": s.recipe.evaluation.scenario,
         "tasks": [r.name for r in result.tasks], "resumed_from_task": result.resumed_from},
        indent=2))
    (s.run_dir / "store_report.txt").write_text(format_report(report))
    parent.log_metrics(summary)
    # the report reads results.json (written above) and the search's fronts from the folder
    for path in [*write_artifacts(result, s.run_dir), write_report(s.run_dir)]:
        parent.log_artifact(path)
    for name in ("results.json", "store_report.txt"):
        parent.log_artifact(s.run_dir / name)
    parent.log_artifact(s.store.path, "store")


def _run_tasks(s: Session, result: RunResult, parent: Run, bars: Bars, first: int,
               compressor: Compressor) -> None:
    n = len(s.stream)
    with bars.bar("tasks", n, keep=True) as tbar:
        bars.advance(tbar, first)
        for t in range(first, n):
            name, _ = s.stream.task_info(t)
            child = parent.child(f"task-{t}", tags={"taskpack.task": str(t),
                                                    "taskpack.task_name": name})
            try:
                row = _one_task(s, t, name, result, child, bars, compressor)
            except KeyboardInterrupt:
                child.end("KILLED")
                raise
            except BaseException:
                child.end("FAILED")
                raise
            child.end("FINISHED")
            info = f"acc {row[-1]:.2f}%"
            if all(a is not None for a in row):
                parent.log_metrics({"acc_mean_so_far": row_mean(row)}, step=t)
                info += f"  mean {row_mean(row):.2f}%"
            bars.advance(tbar, info=info)


def _one_task(s: Session, t: int, name: str, result: RunResult, child: Run, bars: Bars,
              compressor: Compressor) -> Row:
    task = s.load_task(t)
    s.tests.append(task.test)
    baseline = baseline_accuracy(s, task)
    report, before = stage_train(s, task, bars, compressor.resume_trained)
    masks = s.method.end_task(t)
    start = time.perf_counter()
    compressed = compressor.compress(s, TaskContext(task, masks, bars, child))
    # wall seconds of compressing (the passes, or the whole search), next to train_seconds
    stats = compressed.stats | {"compress_seconds": time.perf_counter() - start}
    save_state_before_commit(s, t + 1)
    commit_task(s, task, compressed, task_tensors(s.model, t))
    # every evaluation from here on runs on weights rebuilt from the file on disk
    s.store = PackedStore.open(s.store.path, expect_fingerprint=s.store.model_fingerprint)
    s.method.after_commit(t, s.store)
    snap = committed_snapshot(s.store, t)
    bs = s.recipe.train.eval_batch_size
    acc_commit = evaluate_snapshot(s.model, snap, t, task.test, bs)[0]
    val_acc = evaluate_snapshot(s.model, snap, t, task.val, bs)[0]
    row, inferred = stage_evaluate(s, t)
    rec = TaskRecord(t, name, report, masks, acc_commit, val_acc, stats)
    result.tasks.append(rec)
    result.matrix.add_row(row, inferred)
    result.matrix.before.append(before)
    result.matrix.baseline.append(baseline)
    save_state(s, result)
    child.log_metrics(task_metrics(rec, row, before, baseline, inferred))
    child.log_metrics(s.store.report().as_metrics())
    return row
