"""Two processes on one study: `taskpack run` and `taskpack search --task 0 --worker`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend

from pipeline.recipe import load_recipe
from pipeline.store import PackedStore
from search import study_name

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.tvm]
SETTINGS = ["benchmark.train_limit=800", "benchmark.test_limit=200", "train.epochs=1",
            "train.batch_size=32", "benchmark.val_fraction=0.05", "model.hidden=[64, 64]",
            "benchmark.tasks=1", "search.enabled=true", "search.trials=10",
            "search.finetune_epochs=1", "targets=[{name: host, backend: tvm}]"]


def _cmd(out: Path, *verb: str) -> list[str]:
    args = [sys.executable, "-m", "pipeline.cli", *verb, str(REPO / "recipes/quickstart.yaml"),
            "--no-track"]
    for s in [*SETTINGS, f"output_dir={out}"]:
        args += ["--set", s]
    return args


def test_a_worker_adds_trials_to_the_running_search(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    worker = subprocess.Popen([*_cmd(tmp_path, "search"), "--task", "0", "--worker"], cwd=REPO,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    main = subprocess.run(_cmd(tmp_path, "run"), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    w_out, w_err = worker.communicate(timeout=600)
    assert main.returncode == 0, main.stderr
    assert worker.returncode == 0, w_err
    assert "worker done: task 0" in w_out
    journal = tmp_path / "quickstart" / "search" / "task-0.journal"
    recipe = load_recipe(REPO / "recipes/quickstart.yaml", [*SETTINGS, f"output_dir={tmp_path}"])
    study = optuna.load_study(study_name=study_name(recipe, 0), storage=optuna.storages.
                              JournalStorage(JournalFileBackend(str(journal))))
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(done) == 10  # the budget, exact across the two processes
    assert len({t.number for t in done}) == len(done)
    assert len({t.user_attrs["pid"] for t in done}) == 2, "the worker ran no trial"
    assert PackedStore.open(tmp_path / "quickstart" / "store.tpk").num_tasks == 1


def test_a_worker_started_before_the_run_waits_and_creates_nothing(tmp_path: Path) -> None:
    # it used to build the session (and so create the store) before waiting: started together
    # with `taskpack run`, one of the two then failed on "store file must not exist yet"
    from pipeline.errors import InputError
    from search import run_worker

    recipe = load_recipe(REPO / "recipes/quickstart.yaml", [*SETTINGS, f"output_dir={tmp_path}"])
    with pytest.raises(InputError, match="did not appear"):
        run_worker(recipe, 0, wait_s=0.5)
    assert not (tmp_path / "quickstart").exists()
