"""Whole runs evaluated without a task id, and with ``evaluation.every`` (real Permuted MNIST,
tiny subsets, real store; docs/task-inference.md)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import RecipeError
from pipeline.recipe import recipe_from_dict
from pipeline.runner import head_classes, run_recipe
from pipeline.stages import retested
from pipeline.store import PackedStore
from pipeline.tracking import build_tracker


def _recipe(tmp_path: Path, tasks: int = 3, **extra: Any):
    data: dict[str, Any] = {
        "name": "inferred", "output_dir": str(tmp_path / "runs"),
        # sparse masks and a few epochs: tasks distinct enough to tell apart from one image
        "method": {"kind": "wsn", "density": 0.2},
        "benchmark": {"stream": "permuted_mnist", "tasks": tasks, "train_limit": 1000,
                      "test_limit": 200, "val_fraction": 0.2},
        "model": {"arch": "mlp", "hidden": [64]},
        "train": {"epochs": 3, "lr": 0.01, "batch_size": 32, "eval_batch_size": 20,
                  "threads": 1},
        "tracking": {"enabled": False},
    }
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value}
    return recipe_from_dict(data)


@pytest.mark.slow
def test_wsn_run_infers_permuted_tasks_one_shot_per_batch_tracked_in_mlflow(
        tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    recipe = _recipe(tmp_path, model={"head": "shared"},
                     evaluation={"scenario": "task_inferred"}, tracking={
        "enabled": True, "uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "artifact_location": str(tmp_path / "artifacts")})
    result = run_recipe(recipe, build_tracker(recipe.tracking))
    inferred = result.matrix.inferred
    assert [len(r) for r in inferred] == [1, 2, 3]
    assert inferred[0] == [100.0]  # one candidate
    # far above chance (1/3); measured 90/100/90 (10 batches of 20 per task)
    assert all(a is not None and a > 60.0 for a in inferred[-1]), inferred
    assert all(a is not None and a > 50.0 for a in result.matrix.final), result.matrix.final
    saved = json.loads((result.run_dir / "results.json").read_text())
    assert saved["scenario"] == "task_inferred"
    assert saved["task_inference_matrix"][-1] == inferred[-1]
    assert saved["summary"]["task_inference_acc"] == pytest.approx(sum(inferred[-1]) / 3)
    client = MlflowClient(tracking_uri=recipe.tracking.uri)
    parent = client.get_run(result.run_id)
    assert parent.data.metrics["task_inference_acc"] == pytest.approx(
        result.matrix.task_inference_acc())
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{result.run_id}'")
    last = next(c for c in children if c.info.run_name == "task-2")
    assert last.data.metrics["task_inference_acc_task_0"] == inferred[-1][0]
    assert "task_inference_acc_final" in (result.run_dir / "tasks.csv").read_text()


@pytest.mark.slow
def test_shared_head_binary_per_sample_infers_tasks(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, model={"head": "shared"},
                     evaluation={"scenario": "task_inferred", "inference": "binary",
                                 "infer_per": "sample"})
    result = run_recipe(recipe)
    store = PackedStore.open(result.store_path)
    assert "head" in store.layers  # the shared head is a masked layer of the store
    # far above chance (1/3); measured about 94/86/72 per input
    assert all(a is not None and a > 60.0 for a in result.matrix.inferred[-1]), \
        result.matrix.inferred
    assert all(a is not None and a > 50.0 for a in result.matrix.final), result.matrix.final


@pytest.mark.slow
def test_every_k_re_tests_earlier_tasks_only_every_k_tasks_and_at_the_end(
        tmp_path: Path) -> None:
    result = run_recipe(_recipe(tmp_path, tasks=5, evaluation={"every": 2},
                                benchmark={"train_limit": 300}, train={"epochs": 1}))
    rows = result.matrix.as_list()
    measured = [[j for j, a in enumerate(r) if a is not None] for r in rows]
    assert measured == [[0], [0, 1], [2], [0, 1, 2, 3], [0, 1, 2, 3, 4]]
    # forget-free: the final row equals the diagonal, so BWT is exactly 0 with gaps too
    assert result.matrix.final == [rows[j][j] for j in range(5)]
    assert result.bwt == 0.0
    assert result.acc == pytest.approx(sum(result.matrix.final) / 5)
    saved = json.loads((result.run_dir / "results.json").read_text())
    assert saved["matrix"][2] == [None, None, rows[2][2], None, None]
    progress = json.loads((result.run_dir / "progress.json").read_text())
    assert progress["rows"][2] == [None, None, rows[2][2]]


def test_retested_tasks() -> None:
    assert retested(0, 5, 1) == [0] and retested(3, 5, 1) == [0, 1, 2, 3]
    assert [retested(t, 7, 3) for t in range(7)] == [
        [0], [1], [0, 1, 2], [3], [4], [0, 1, 2, 3, 4, 5], [0, 1, 2, 3, 4, 5, 6]]


def test_shared_head_and_task_inference_need_one_class_count(tmp_path: Path) -> None:
    shared = _recipe(tmp_path, model={"head": "shared"})
    assert head_classes(shared, [10, 10, 10]) == 10
    assert head_classes(_recipe(tmp_path), [2, 3]) is None
    with pytest.raises(RecipeError, match=r"model.head: shared needs every task to have the "
                                          r"same class count, but .* \[2, 3\] classes"):
        head_classes(shared, [2, 3, 2])
    inferred = _recipe(tmp_path, evaluation={"scenario": "task_inferred"})
    with pytest.raises(RecipeError, match="evaluation.scenario: task_inferred needs every"):
        head_classes(inferred, [2, 3])


def test_per_sample_inference_with_batch_statistics_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="infer_per: sample needs model.norm none or "
                                          "per_task"):
        _recipe(tmp_path, model={"norm": "stateless"},
                evaluation={"scenario": "task_inferred", "infer_per": "sample"})
