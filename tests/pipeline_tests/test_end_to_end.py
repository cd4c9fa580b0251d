"""A real continual run on real MNIST, tracked in a real MLflow sqlite store (marked slow)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from pipeline.data import build_stream
from pipeline.evaluation import snapshot_logits
from pipeline.recipe import load_recipe
from pipeline.runner import run_recipe
from pipeline.tracking import build_tracker

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _recipe(tmp_path: Path, *extra: str):
    return load_recipe(REPO / "recipes/quickstart.yaml", [
        "benchmark.train_limit=2000", "benchmark.test_limit=500", "train.epochs=2",
        "train.batch_size=32", "benchmark.val_fraction=0.05",
        "model.hidden=[100, 100]", "search.enabled=false", f"output_dir={tmp_path / 'runs'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlruns/mlflow.db'}",
        f"tracking.artifact_location={tmp_path / 'mlruns/artifacts'}", *extra])


def test_pmnist_run_tracks_parent_and_children_and_never_forgets(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    recipe = _recipe(tmp_path)
    result = run_recipe(recipe, build_tracker(recipe.tracking))
    rows = result.matrix.as_list()
    assert len(rows) == 3 and all(len(r) == 3 for r in rows)
    for j in range(3):  # re-measured, and identical because nothing was forgotten
        assert {rows[i][j] for i in range(j, 3)} == {rows[j][j]}
    assert result.bwt == 0.0
    assert all(a > 50.0 for a in result.matrix.final), result.matrix.final  # chance is 10%

    client = MlflowClient(tracking_uri=recipe.tracking.uri)
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["method.density"] == "0.3"
    assert parent.data.metrics["acc"] == pytest.approx(result.acc)
    assert parent.data.metrics["bwt"] == 0.0
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert sorted(c.info.run_name for c in children) == ["task-0", "task-1", "task-2"]
    assert all(c.info.status == "FINISHED" for c in children)
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"recipe.yaml", "tasks.csv", "accuracy_matrix.png", "results.json",
            "store_report.txt", "store", "report.html"} <= artifacts
    report = (result.run_dir / "report.html").read_text()
    assert "<script" not in report  # no search, no fronts: a plain page, no plotly.js
    assert [a.path for a in client.list_artifacts(result.run_id, "store")] == ["store/store.tpk"]
    size = result.store_path.stat().st_size
    assert parent.data.metrics["store/bytes_total"] == size
    assert parent.data.metrics["store/ratio_to_dense_fp32"] == pytest.approx(
        size / (4 * (784 * 100 + 100 * 100)))
    assert sum(parent.data.metrics[f"store/bytes_{c}"] for c in
               ("codes", "masks", "codebooks", "tensors", "metadata")) == size
    with (result.run_dir / "tasks.csv").open() as f:
        assert [r["task"] for r in csv.DictReader(f)] == ["0", "1", "2"]


@pytest.mark.parametrize("method", [
    ["method={kind: wsn, density: 0.3}"],
    ["method.kind=tsn", "method.policy=split", "compression.default.sparsity=0.5",
     "compression.default.bits=8"],
    ["method.kind=tsn", "method.policy=reuse_only", "compression.default.sparsity=0.3",
     "compression.default.pattern=block(4,1)", "compression.default.bits=4"],
], ids=["wsn", "tsn-split", "tsn-reuse-block"])
def test_store_is_bit_exact_and_old_logits_never_change(tmp_path: Path, monkeypatch,
                                                        method: list[str]) -> None:
    import pipeline.runner as runner
    from pipeline.evaluation import committed_snapshot
    from pipeline.store import PackedStore

    recipe = _recipe(tmp_path, "tracking.enabled=false", *method)
    probe = build_stream(recipe.benchmark).load(0).test.x[:64]
    recorded: list[list[torch.Tensor]] = []
    real_commit = runner.commit_task

    def commit_and_record(s, task, compressed, tensors):
        real_commit(s, task, compressed, tensors)
        layers = compressed.layers
        store = PackedStore.open(s.store.path)  # rebuilt from the file on disk
        weights = store.materialize(task.index)
        for name, r in layers.items():  # exactly the weights evaluated at commit time
            assert torch.equal(weights[name], torch.where(r.mask, r.values, 0.0)), name
        for name, value in tensors.items():
            assert torch.equal(weights[name], value), name
        recorded.append([snapshot_logits(s.model, committed_snapshot(store, j), j,
                                         probe, 32) for j in range(task.index + 1)])

    monkeypatch.setattr(runner, "commit_task", commit_and_record)
    result = run_recipe(recipe)
    assert result.bwt == 0.0
    for t in range(3):
        for later in range(t, 3):
            assert torch.equal(recorded[later][t], recorded[t][t]), (t, later)


def test_ctrl_c_ends_the_mlflow_run_as_killed(tmp_path: Path, monkeypatch) -> None:
    from mlflow.tracking import MlflowClient

    import pipeline.stages as stages

    recipe = _recipe(tmp_path)
    calls = []
    real = stages.train_task

    def interrupt_second_task(method, task, data, cfg, *args, **kwargs):
        calls.append(task)
        if task == 1:
            raise KeyboardInterrupt
        return real(method, task, data, cfg, *args, **kwargs)

    monkeypatch.setattr(stages, "train_task", interrupt_second_task)
    tracker = build_tracker(recipe.tracking)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, tracker)
    client = MlflowClient(tracking_uri=recipe.tracking.uri)
    runs = client.search_runs([tracker.experiment_id])
    status = {r.info.run_name: r.info.status for r in runs}
    assert status == {"quickstart": "KILLED", "task-0": "FINISHED", "task-1": "KILLED"}
