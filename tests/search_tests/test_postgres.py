"""Studies on a real PostgreSQL (a throwaway cluster, ``postgres_url`` in conftest.py): the
driver and the URL, errors before any training, heartbeats and retries, study names, --fresh.
The owner-plus-workers run with a killed worker is in test_postgres_workers.py."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pipeline.errors import InputError
from pipeline.recipe import SearchConfig, load_recipe
from pipeline.tracking import NoopRun
from search import SearchCompressor, rdb_url, study_name
from search._storage import ask, check_storage, close_storage, fail_stale, open_storage
from search._study import RETRY_OF, claim, claimed, finished, place, retry_stale

REPO = Path(__file__).resolve().parents[2]


def _cfg(url: str, **kw) -> SearchConfig:
    return SearchConfig.model_validate({"enabled": True, "storage": url, **kw})


def test_postgresql_urls_use_psycopg_3() -> None:
    assert rdb_url("postgresql://u:p@db:5432/optuna") == "postgresql+psycopg://u:p@db:5432/optuna"
    assert rdb_url("postgresql+psycopg2://db/x") == "postgresql+psycopg2://db/x"  # as given
    assert rdb_url("sqlite:///x.db") == "sqlite:///x.db"


def test_a_server_that_does_not_answer_is_one_line_before_any_training(tmp_path: Path) -> None:
    url = f"postgresql://taskpack:secret@/optuna?host={tmp_path}"  # no server on that socket
    start = time.monotonic()
    with pytest.raises(InputError, match=r"^search.storage postgresql\+psycopg://taskpack:\*\*\*"
                                         r"@/optuna.*cannot open the study database: "
                                         r"OperationalError: ") as e:
        check_storage(_cfg(url))
    assert "\n" not in str(e.value) and "secret" not in str(e.value)
    assert time.monotonic() - start < 20
    # through the CLI, the run and a worker: exit 2, one line, nothing trained or waited for
    # (no run folder was made)
    for verb in (["run"], ["search", "--task", "0", "--worker"]):
        proc = subprocess.run(
            [sys.executable, "-m", "pipeline.cli", verb[0], str(REPO / "recipes/quickstart.yaml"),
             *verb[1:], "--no-track", "--set", f"output_dir={tmp_path / 'runs'}", "--set",
             f"search.storage={url}"], cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("error: search.storage ") and proc.stderr.count("\n") == 1
        assert not (tmp_path / "runs").exists()


def test_a_missing_driver_names_the_package(monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # import psycopg -> ImportError
    with pytest.raises(InputError, match=r"driver cannot be imported .*pip install "
                                         r"'psycopg\[binary\]'"):
        check_storage(_cfg(f"postgresql://postgres@/postgres?host={tmp_path}"))


def test_a_dead_workers_trial_is_failed_and_asked_again(postgres_url: str,
                                                        tmp_path: Path) -> None:
    cfg = _cfg(postgres_url, heartbeat_s=1, grace_s=2, trials=3)
    storage = open_storage(cfg, tmp_path / "unused.journal", retry_stale(NoopRun()))
    try:
        study = optuna.create_study(study_name="stale", storage=storage,
                                    directions=["maximize"])
        dead = ask(study)
        x = dead.suggest_float("x", 0, 1)
        storage.record_heartbeat(dead._trial_id)  # one beat, then its process "dies"
        assert claimed(study) == 1 and finished(study) == 0
        time.sleep(3.5)  # past the grace period
        fail_stale(study, storage, retry_stale(NoopRun()))
        trials = study.get_trials()
        assert trials[0].state == TrialState.FAIL
        (retry,) = [t for t in trials if t.state == TrialState.WAITING]
        assert retry.params == {"x": x} and retry.user_attrs[RETRY_OF] == 0
        assert finished(study) == 0 and claimed(study) == 0  # the dead trial takes no place
        again = ask(study)  # the retry is asked first, with the same plan
        assert again.number == retry.number and again.suggest_float("x", 0, 1) == x
        assert place(study, again.number) == 0
        study.tell(again, 1.0)
        assert finished(study) == 1
    finally:
        close_storage(storage)


def _recipe(tmp_path: Path, url: str, *extra: str):
    return load_recipe(REPO / "recipes/quickstart.yaml", [
        f"output_dir={tmp_path}", f"search.storage={url}",
        "targets=[{name: host, backend: eager}]", *extra])


def test_study_names_hash_what_shapes_the_search(tmp_path: Path) -> None:
    url = "postgresql://postgres@/postgres?host=/nowhere"
    base = study_name(_recipe(tmp_path, url), 0)
    assert base.startswith("quickstart-task-0-") and len(base) == len("quickstart-task-0-") + 10
    assert study_name(_recipe(tmp_path, url), 1) == base.replace("-task-0-", "-task-1-")
    for same in ("search.trials=9", "search.timeout_s=60", "search.heartbeat_s=2",
                 f"output_dir={tmp_path / 'elsewhere'}", "tracking.experiment=other"):
        assert study_name(_recipe(tmp_path, url, same), 0) == base, same
    assert study_name(_recipe(tmp_path, "sqlite:///x.db"), 0) == base
    for other in ("search.space=[{match: '.*', bits: [8]}]", "search.seed=1", "train.lr=0.01",
                  "benchmark.train_limit=100", "search.objectives=[accuracy, bytes]",
                  "targets=[{name: host, backend: eager, threads: 2}]"):
        assert study_name(_recipe(tmp_path, url, other), 0) != base, other


def test_fresh_deletes_the_recipes_studies(postgres_url: str, tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, postgres_url)
    storage = open_storage(recipe.search, tmp_path / "unused.journal")
    try:
        names = [study_name(recipe, 0), study_name(recipe, 1), "quickstart-task-0-0123456789",
                 "quickstart-other", "another-task-0"]
        for name in names:
            optuna.create_study(study_name=name, storage=storage)
    finally:
        close_storage(storage)
    deleted = SearchCompressor(recipe).forget_studies()
    assert sorted(deleted) == sorted(names[:3])
    storage = open_storage(recipe.search, tmp_path / "unused.journal")
    try:
        assert sorted(optuna.get_all_study_names(storage)) == sorted(names[3:])
        for name in names[3:]:
            optuna.delete_study(study_name=name, storage=storage)
    finally:
        close_storage(storage)


def test_the_budget_is_exact_when_processes_claim_at_once(postgres_url: str,
                                                          tmp_path: Path) -> None:
    """Eight claimers (each with its own connection, as processes have), released together,
    over and over, for a budget of 5: exactly 5 trials run, the rest are told PRUNED unrun."""
    cfg = _cfg(postgres_url, heartbeat_s=1, grace_s=2)
    budget, claimers = 5, 8
    storages = [open_storage(cfg, tmp_path / "unused.journal") for _ in range(claimers)]
    optuna.create_study(study_name="race", storage=storages[0])
    studies = [optuna.load_study(study_name="race", storage=s) for s in storages]
    barrier = threading.Barrier(claimers)
    ran: list[int] = []

    def claimer(i: int) -> None:
        for _ in range(budget):
            barrier.wait()
            trial = claim(studies[i], storages[i], budget)
            if trial is not None:
                ran.append(trial.number)
                studies[i].tell(trial, 1.0)

    try:
        threads = [threading.Thread(target=claimer, args=(i,)) for i in range(claimers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        trials = studies[0].get_trials()
        done = finished(studies[0])
    finally:
        for s in storages:
            close_storage(s)
    states = [t.state for t in trials]
    assert len(ran) == states.count(TrialState.COMPLETE) == budget == done
    assert states.count(TrialState.PRUNED) == len(trials) - budget
