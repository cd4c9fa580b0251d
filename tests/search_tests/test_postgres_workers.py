"""The owner (`taskpack run`) and three workers (`taskpack search --worker`) share one task's
study on a real PostgreSQL; one worker is killed with SIGKILL in the middle of a trial.

What must hold: the run completes; exactly ``search.trials`` trials count (finished == budget,
none duplicated across processes); the killed trial is FAIL (its heartbeat stopped) and its plan
is asked again and finished (none lost). The figures are printed (`pytest -s`) for docs/search.md.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pipeline.recipe import load_recipe
from pipeline.store import PackedStore
from search import study_name
from search._storage import close_storage, open_storage
from search._study import RETRY_OF

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
TRIALS = 6
# trials of a few seconds (fine-tuned), eager latency; heartbeats every second, dead after 4 s
SETTINGS = ["benchmark.train_limit=800", "benchmark.test_limit=200", "train.epochs=1",
            "train.batch_size=32", "benchmark.val_fraction=0.05", "model.hidden=[64, 64]",
            "benchmark.tasks=1", f"search.trials={TRIALS}", "search.finetune_epochs=1",
            "targets=[{name: host, backend: eager}]", "search.heartbeat_s=1",
            "search.grace_s=4"]


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("w") as f:  # a file, not a pipe: nobody reads it while the run goes on
        return subprocess.Popen(args, cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO)})


def _running_trial_of(study_of, pids: set[int]) -> optuna.trial.FrozenTrial | None:
    try:
        study = study_of()
    except KeyError:  # the owner has not created the study yet
        return None
    # its plan is chosen once its MLflow run is named (then it compresses, fine-tunes, measures)
    return next((t for t in study.get_trials(states=(TrialState.RUNNING,))
                 if t.user_attrs.get("pid") in pids and "mlflow_run_id" in t.user_attrs), None)


def test_a_killed_worker_loses_and_duplicates_no_trial(postgres_url: str,
                                                       tmp_path: Path) -> None:
    settings = [*SETTINGS, f"output_dir={tmp_path / 'runs'}", f"search.storage={postgres_url}"]
    recipe = load_recipe(REPO / "recipes/quickstart.yaml", settings)
    sets = [a for s in settings for a in ("--set", s)]
    cli = [sys.executable, "-m", "pipeline.cli"]
    quickstart = str(REPO / "recipes/quickstart.yaml")
    workers = [_start([*cli, "search", quickstart, "--no-track", *sets, "--task", "0",
                       "--worker"], tmp_path / f"worker-{i}.log") for i in range(3)]
    owner = _start([*cli, "run", quickstart, "--no-track", *sets], tmp_path / "owner.log")
    procs = [owner, *workers]
    storage = open_storage(recipe.search, tmp_path / "unused.journal")
    name = study_name(recipe, 0)
    try:
        def study_of() -> optuna.Study:
            return optuna.load_study(study_name=name, storage=storage)

        deadline = time.monotonic() + 240
        victim = None
        while victim is None:
            assert owner.poll() is None, (tmp_path / "owner.log").read_text()
            assert time.monotonic() < deadline, "no worker ran a trial"
            victim = _running_trial_of(study_of, {w.pid for w in workers})
            time.sleep(0.1)
        killed = next(w for w in workers if w.pid == victim.user_attrs["pid"])
        os.kill(killed.pid, signal.SIGKILL)
        assert owner.wait(timeout=300) == 0, (tmp_path / "owner.log").read_text()
        for w in workers:
            rc = w.wait(timeout=120)
            assert rc == (-signal.SIGKILL if w is killed else 0), w.args
        trials = study_of().get_trials()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        close_storage(storage)

    counted = [t for t in trials if t.state == TrialState.COMPLETE
               or (t.state == TrialState.FAIL and "failure_reason" in t.user_attrs)]
    dead = trials[victim.number]
    assert dead.state == TrialState.FAIL and "failure_reason" not in dead.user_attrs
    retries = [t for t in trials if t.user_attrs.get(RETRY_OF) == dead.number]
    numbers = {t.number for t in counted}
    # duplicated: a plan counted twice (a trial and its retry both counted)
    duplicated = sum(t.user_attrs.get(RETRY_OF) in numbers for t in counted)
    # lost: a trial that neither counts nor had its plan finished by a retry
    interrupted = [t for t in trials if t.state == TrialState.FAIL and t.number not in numbers]
    lost = sum(not any(r.user_attrs.get(RETRY_OF) == t.number and r.number in numbers
                       for r in trials) for t in interrupted)
    pruned = sum(t.state == TrialState.PRUNED for t in trials)
    print(f"\nworker kill: trials finished {len(counted)}/{TRIALS}, lost {lost}, duplicated "
          f"{duplicated}; killed trial {dead.number} FAIL, retried as "
          f"{[r.number for r in retries]}; surplus claims pruned {pruned}; processes "
          f"{len({t.user_attrs['pid'] for t in counted})}")
    assert len(counted) == TRIALS and duplicated == 0 and lost == 0
    (retry,) = retries
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert retry.user_attrs["pid"] != killed.pid
    assert not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials)
    assert PackedStore.open(tmp_path / "runs" / "quickstart" / "store.tpk").num_tasks == 1
