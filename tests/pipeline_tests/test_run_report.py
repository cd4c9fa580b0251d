"""The run report: one self-contained page per run, rendered in headless Chromium.

One small real run (MNIST, 2 tasks, a 3-trial search measured with the eager backend, MLflow in
a temporary sqlite store) gives the run folder every test reads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.errors import InputError
from pipeline.export import store_hash
from pipeline.recipe import load_recipe
from pipeline.run_report import write_report
from pipeline.runner import run_recipe
from pipeline.tracking import build_tracker
from tests.pipeline_tests._chromium import render

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from search import SearchCompressor

    tmp = tmp_path_factory.mktemp("report")
    recipe = load_recipe(REPO / "recipes/quickstart.yaml", [
        "benchmark.train_limit=600", "benchmark.test_limit=200", "train.epochs=1",
        "train.batch_size=32", "benchmark.val_fraction=0.1", "model.hidden=[32, 32]",
        "benchmark.tasks=2", "search.trials=3", "search.constraints.max_acc_drop=5.0",
        "targets=[{name: host, backend: eager}]", f"output_dir={tmp / 'runs'}",
        f"tracking.uri=sqlite:///{tmp / 'mlruns/mlflow.db'}",
        f"tracking.artifact_location={tmp / 'mlruns/artifacts'}"])
    result = run_recipe(recipe, build_tracker(recipe.tracking),
                        compressor=SearchCompressor(recipe))
    return recipe, result, tmp


def test_the_report_is_an_mlflow_artifact_of_the_parent_run(run) -> None:
    from mlflow.tracking import MlflowClient

    recipe, result, _ = run
    client = MlflowClient(tracking_uri=recipe.tracking.uri)
    assert "report.html" in {a.path for a in client.list_artifacts(result.run_id)}
    page = result.run_dir / "report.html"
    assert page.stat().st_size < 6_000_000  # plotly.js inlined once, whatever the task count


def test_the_report_holds_the_matrix_store_latency_and_every_task(run) -> None:
    _, result, _ = run
    page = (result.run_dir / "report.html").read_text()
    for row in result.matrix.rows:
        for acc in row:
            assert f"{acc:.2f}</span>" in page
    assert f"{result.store_path.stat().st_size:,}</b>" in page  # the file's bytes
    for t in range(2):
        front = json.loads((result.run_dir / f"search/task-{t}/pareto.json").read_text())
        assert f"<section id='task-{t}'>" in page and f"id='front-{t}'" in page
        assert front["reason"] in page
        latency = result.tasks[t].compression["search_chosen_latency_ms"]
        assert f"{latency:.4f}" in page
    assert page.count("<script>") == 2  # plotly.js once, then the figures


def test_the_page_renders_in_chromium_without_errors(run, tmp_path: Path) -> None:
    _, result, _ = run
    shown = render(result.run_dir / "report.html", tmp_path / "profile")
    assert shown.console == []  # nothing logged: no uncaught exception, no failed load
    for t in range(2):  # plotly drew each front into its div
        div = shown.dom.split(f'id="front-{t}"')[1].split("</section>")[0]
        assert 'class="plot-container plotly"' in div and "main-svg" in div
    assert "accuracy matrix" in shown.dom and "bytes by task" in shown.dom


def test_chromium_sees_a_script_error(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<html><body><script>notDefined();</script></body></html>")
    shown = render(page, tmp_path / "profile", wait_ms=1000)
    assert len(shown.console) == 1 and "Uncaught ReferenceError" in shown.console[0]


def test_bundles_of_this_store_are_linked(run, tmp_path: Path) -> None:
    recipe, result, tmp = run
    run_dir = tmp_path / "runs" / recipe.name
    shutil.copytree(result.run_dir, run_dir)
    (run_dir / "recipe.yaml").write_text((run_dir / "recipe.yaml").read_text().replace(
        str(tmp / "runs"), str(tmp_path / "runs")))  # this copy's own output_dir
    ours = {"task": 1, "target": {"name": "host"}, "store_hash": store_hash(run_dir / "store.tpk"),
            "tuned": True, "latency": {"median_ms": 0.0123, "p10_ms": 0.011, "p90_ms": 0.013,
                                       "converged": False}}
    for root, hash_ in ((tmp_path / "exports", ours["store_hash"]),
                        (tmp_path / "elsewhere", "another store")):
        folder = root / "host" / "task-1"
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(json.dumps({**ours, "store_hash": hash_}))
    page = write_report(run_dir, [tmp_path / "elsewhere"]).read_text()
    assert "<a href='../../exports/host/task-1/manifest.json'>" in page
    assert "elsewhere" not in page  # a bundle of another store is not this run's
    assert "0.0123" in page and "<b>no</b>" in page  # not converged, said in bold


def test_a_run_without_search_gets_a_page_without_scripts(run, tmp_path: Path) -> None:
    _, result, _ = run
    run_dir = tmp_path / "r"
    shutil.copytree(result.run_dir, run_dir, ignore=shutil.ignore_patterns("search"))
    page = write_report(run_dir).read_text()
    assert "<script" not in page and len(page) < 100_000
    assert "Not searched (no <code>search/task-0/pareto.json</code>)" in page


def test_a_folder_without_results_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no results.json; a report needs a finished run"):
        write_report(tmp_path)
