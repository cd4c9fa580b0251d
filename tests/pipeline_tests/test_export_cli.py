"""`taskpack export`: bundles from a real store, loaded back and run (slow, tvm)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compilers import load_bundle
from pipeline.cli import main
from pipeline.data import build_stream
from pipeline.evaluation import committed_snapshot, snapshot_logits
from pipeline.recipe import load_recipe
from pipeline.runner import run_recipe
from pipeline.store import PackedStore

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.tvm]


def test_export_host_and_aarch64_bundles_from_a_store(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    recipe = load_recipe(REPO / "recipes/quickstart.yaml", [
        "benchmark.train_limit=600", "benchmark.test_limit=200", "train.epochs=1",
        "benchmark.tasks=2", "model.hidden=[32, 32]", "search.enabled=false",
        "tracking.enabled=false", f"output_dir={tmp_path / 'runs'}",
        "targets=[{name: host, backend: tvm}]"])
    result = run_recipe(recipe)
    out = tmp_path / "exports"
    assert main(["export", str(result.store_path), "--all-tasks", "--target", "host",
                 "--out", str(out), "--no-track"]) == 0
    printed = capsys.readouterr().out
    assert "host/task-1: task 1 (pmnist-1), median" in printed and "batch sizes [1, 8]" in printed
    # the store sits in its run folder: the run report is rebuilt with links to the bundles
    assert f"report: {result.run_dir / 'report.html'}" in printed
    report = (result.run_dir / "report.html").read_text()
    assert "<a href='../../exports/host/task-1/manifest.json'>" in report
    x = build_stream(recipe.benchmark).load(0).test.x[:1]
    store = PackedStore.open(result.store_path)
    from pipeline.runner import prepare

    model = prepare(recipe).model
    for t in range(2):
        model.add_task(10)
        bundle = load_bundle(out / "host" / f"task-{t}")
        assert bundle.manifest["task"] == t and bundle.manifest["numerics"]["passed"]
        ref = snapshot_logits(model, committed_snapshot(store, t), t, x, 1)
        got = bundle.run(x)
        assert (got - ref).abs().max() / ref.abs().max() < 1e-4
    if main(["export", str(result.store_path), "--task", "0", "--target", "aarch64",
             "--out", str(out), "--no-track"]) == 0:
        manifest = json.loads((out / "aarch64" / "task-0" / "manifest.json").read_text())
        assert manifest["latency"] is None and (out / "aarch64/task-0/model-b8.so").exists()
    assert main(["export", str(result.store_path), "--task", "5", "--target", "host",
                 "--out", str(out)]) == 2
    assert "task id must be in 0..1" in capsys.readouterr().err
    assert torch.is_tensor(got)
