"""The search on real MNIST with real TVM builds, tracked in a real MLflow store (slow, tvm).

Reads the Pareto fronts back through MLflow's API, and kills a search with SIGKILL to check that
a re-run loses and repeats no finished trial and commits the same store.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.recipe import load_recipe
from pipeline.runner import run_recipe
from pipeline.store import PackedStore
from pipeline.tracking import build_tracker
from search import study_name

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.tvm]

BASE = ["benchmark.train_limit=1000", "benchmark.test_limit=300", "train.epochs=1",
        "train.batch_size=32", "benchmark.val_fraction=0.05", "model.hidden=[64, 64]",
        "benchmark.tasks=2", "search.enabled=true", "search.trials=4",
        "search.constraints.max_acc_drop=5.0",
        "targets=[{name: host, backend: tvm}]"]


def _recipe(tmp_path: Path, *extra: str):
    return load_recipe(REPO / "recipes/quickstart.yaml", [
        *BASE, f"output_dir={tmp_path / 'runs'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlruns/mlflow.db'}",
        f"tracking.artifact_location={tmp_path / 'mlruns/artifacts'}", *extra])


def test_pareto_fronts_are_in_mlflow(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from search import SearchCompressor

    recipe = _recipe(tmp_path)
    result = run_recipe(recipe, build_tracker(recipe.tracking),
                        compressor=SearchCompressor(recipe))
    assert result.bwt == 0.0
    client = MlflowClient(tracking_uri=recipe.tracking.uri)
    exp = client.get_run(result.run_id).info.experiment_id
    tasks = client.search_runs([exp], f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert sorted(r.info.run_name for r in tasks) == ["task-0", "task-1"]
    chosen_trial = {}
    for task_run in tasks:
        children = client.search_runs([exp],
                                      f"tags.mlflow.parentRunId = '{task_run.info.run_id}'")
        k = task_run.info.run_name.removeprefix("task-")
        trials = [r for r in children if "/trial-" in r.info.run_name]
        assert sorted(r.info.run_name for r in trials) == [f"task-{k}/trial-{i}"
                                                           for i in range(4)]
        for r in trials:  # grouped in the UI by task, target and method
            assert (r.data.tags["taskpack.task"], r.data.tags["taskpack.target"],
                    r.data.tags["taskpack.method"]) == (k, "host", recipe.method.kind)
        # the dense reference: measured like a trial, outside the trial budget
        (ref,) = [r for r in children if r.info.run_name == "dense-reference"]
        assert ref.data.tags["taskpack.reference"] == "dense"
        assert ref.data.params["backbone.1.sparsity"] == "0.0"
        assert ref.data.params["backbone.1.bits"] == "32"
        for r in [*trials, ref]:
            m = r.data.metrics
            assert {"val_accuracy", "latency_median_ms", "latency_p90_ms",
                    "store_bytes"} <= m.keys()
            assert m["latency_median_ms"] > 0 and m["store_bytes"] > 0
            assert m["latency_threads"] == 1  # batch-1 latency runs on one thread by default
            assert r.data.tags["pareto"] in ("true", "false")
            assert r.data.tags["label.backbone.1"] in ("speed-realizable", "storage-only")
        for r in trials:
            assert r.data.params["backbone.1.pattern"] in ("unstructured", "block(16,1)")
        chosen = [r for r in [*trials, ref] if r.data.tags.get("chosen") == "true"]
        assert len(chosen) == 1
        fell_back = task_run.data.tags["search.fell_back_to_dense"] == "true"
        m = task_run.data.metrics
        assert m["search_fell_back_to_dense"] == float(fell_back)
        assert m["search_dense_latency_ms"] == ref.data.metrics["latency_median_ms"]
        if chosen[0] is ref:
            assert task_run.data.tags["search.chosen_trial"] == "-1"
            assert m["search_speedup_vs_dense"] == 1.0
        else:
            assert not fell_back and chosen[0].data.tags["pareto"] == "true"
            number = chosen[0].info.run_name.rsplit("-", 1)[1]
            assert task_run.data.tags["search.chosen_trial"] == number
            # the committed plan is on the task run, named like the trial's params
            assert {k: v for k, v in task_run.data.params.items()
                    if k != "search.chosen_trial"} == chosen[0].data.params
            # never slower than the task as trained
            assert m["search_chosen_latency_ms"] < m["search_dense_latency_ms"]
            assert m["search_speedup_vs_dense"] > 1.0
        chosen_trial[task_run.info.run_name] = chosen[0]
        assert "search.reason" in task_run.data.tags
        files = {a.path for a in client.list_artifacts(task_run.info.run_id, "pareto")}
        # pareto.html stays in the run folder: it loads the run's one plotly.min.js
        assert files == {"pareto/pareto.csv", "pareto/pareto.png", "pareto/pareto.json",
                         "pareto/chosen.json"}
    # warm start: task 1's first trial is the plan task 0 committed (none after the dense plan)
    by_name = {r.info.run_name: r for r in tasks}
    trials_1 = client.search_runs([exp], f"tags.mlflow.parentRunId = "
                                  f"'{by_name['task-1'].info.run_id}'")
    first_1 = next(r for r in trials_1 if r.info.run_name == "task-1/trial-0")
    chosen_0 = chosen_trial["task-0"]
    if chosen_0.info.run_name != "dense-reference":
        assert first_1.data.params == chosen_0.data.params


def _cli(out: Path) -> subprocess.Popen:
    args = [sys.executable, "-m", "pipeline.cli", "run", str(REPO / "recipes/quickstart.yaml"),
            "--no-track"]
    for s in [*BASE, f"output_dir={out}", "search.objectives=[accuracy, bytes]",
              "search.selection.policy=knee"]:
        args += ["--set", s]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def _close_pipes(proc: subprocess.Popen) -> None:
    """A killed process's pipes are not read: close them (else ResourceWarning: unclosed file).
    Not communicate(): a grandchild that inherited the pipes could keep them open."""
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def _complete(journal: Path) -> list[dict]:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if not journal.exists():
        return []
    # output_dir does not enter the study name
    name = study_name(load_recipe(REPO / "recipes/quickstart.yaml", [
        *BASE, "search.objectives=[accuracy, bytes]", "search.selection.policy=knee"]), 0)
    study = optuna.load_study(study_name=name, storage=optuna.storages.JournalStorage(
        JournalFileBackend(str(journal))))
    return [t.params for t in study.get_trials(
        states=(optuna.trial.TrialState.COMPLETE,))]


def test_killed_search_resumes_without_losing_or_repeating_trials(tmp_path: Path) -> None:
    run_dir = tmp_path / "killed" / "quickstart"
    journal = run_dir / "search" / "task-0.journal"
    proc = _cli(tmp_path / "killed")
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(_complete(journal)) < 2:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _close_pipes(proc)
    before = _complete(journal)
    assert 2 <= len(before) < 4, "kill the search in the middle"
    resumed = _cli(tmp_path / "killed")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    # task 0 is not trained again: its search continues from the published trained state
    assert (f"resuming task 0 after trial {len(before) - 1} ({len(before)} of 4 trials done), "
            f"reusing the trained checkpoint {run_dir / 'search/task-0-trained.npz'}") in err
    after = _complete(journal)
    assert after[: len(before)] == before  # nothing lost
    assert len(after) == 4  # finished trials not repeated; an interrupted one is re-asked

    straight = _cli(tmp_path / "straight")
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err
    a = PackedStore.open(run_dir / "store.tpk")
    b = PackedStore.open(tmp_path / "straight" / "quickstart" / "store.tpk")
    assert a.num_tasks == b.num_tasks == 2
    # the same trials as without the kill
    assert after == _complete(tmp_path / "straight" / "quickstart" / "search" / "task-0.journal")
    assert a.path.read_bytes() == b.path.read_bytes()  # and the same committed store
