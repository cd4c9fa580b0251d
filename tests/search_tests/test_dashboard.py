"""``taskpack dashboard``: optuna-dashboard served on the run's real studies (journal files or an
RDB), answering HTTP, then stopped."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend

from pipeline.cli import main
from pipeline.recipe import load_recipe
from search._dashboard import dashboard_storage, serving

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = REPO / "recipes/quickstart.yaml"


def _study(storage, name: str, trials: int = 2) -> None:  # noqa: ANN001
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, directions=["maximize"])
    for i in range(trials):
        study.add_trial(optuna.trial.create_trial(
            params={"x": float(i)}, distributions={"x": optuna.distributions.FloatDistribution(
                0, 10)}, values=[float(i)]))


def _journals(run_dir: Path, tasks: int) -> None:
    (run_dir / "search").mkdir(parents=True)
    for t in range(tasks):
        _study(optuna.storages.JournalStorage(JournalFileBackend(
            str(run_dir / "search" / f"task-{t}.journal"))), f"quickstart-task-{t}-0123456789")


def _get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        assert r.status == 200
        return json.loads(r.read())


def test_serves_the_latest_task_journal_and_answers(tmp_path: Path) -> None:
    recipe = load_recipe(QUICKSTART, [f"output_dir={tmp_path}"])
    _journals(tmp_path / "quickstart", 2)
    found = dashboard_storage(recipe, tmp_path / "quickstart")
    assert found.where.startswith(str(tmp_path / "quickstart/search/task-1.journal"))
    assert "--task 0" in found.where
    with serving(found.storage, port=0) as server:
        studies = _get(server.server_port, "/api/studies")["study_summaries"]
        assert [s["study_name"] for s in studies] == ["quickstart-task-1-0123456789"]
        detail = _get(server.server_port, f"/api/studies/{studies[0]['study_id']}")
        assert [t["values"] for t in detail["trials"]] == [[0.0], [1.0]]
    with pytest.raises(OSError):  # stopped: nothing answers any more
        urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/api/studies", timeout=5)
    first = dashboard_storage(recipe, tmp_path / "quickstart", task=0)
    assert first.where.startswith(str(tmp_path / "quickstart/search/task-0.journal"))


def test_an_rdb_storage_shows_every_task(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    for t in range(2):
        _study(url, f"quickstart-task-{t}-0123456789", trials=1)
    recipe = load_recipe(QUICKSTART, [f"search.storage={url}"])
    found = dashboard_storage(recipe, tmp_path / "none")
    with serving(found.storage, port=0) as server:
        names = {s["study_name"]
                 for s in _get(server.server_port, "/api/studies")["study_summaries"]}
    assert names == {"quickstart-task-0-0123456789", "quickstart-task-1-0123456789"}
    found.storage.engine.dispose()


def test_the_command_serves_until_ctrl_c(tmp_path: Path) -> None:
    _journals(tmp_path / "quickstart", 1)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "dashboard", str(QUICKSTART), "--set",
         f"output_dir={tmp_path}", "--port", "0"], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"optuna-dashboard on {tmp_path}/quickstart/search/task-0.journal")
        port = int(line.split("http://127.0.0.1:")[1].split("/")[0])
        (study,) = _get(port, "/api/studies")["study_summaries"]
        assert study["study_name"] == "quickstart-task-0-0123456789"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/dashboard", timeout=30) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "dashboard stopped" in out


def test_no_study_or_no_package_is_one_line_exit_2(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["dashboard", str(QUICKSTART), "--set", f"output_dir={tmp_path}", "--port", "0"]
    assert main(argv) == 2
    assert "no search study yet; run `taskpack run`" in capsys.readouterr().err
    _journals(tmp_path / "quickstart", 1)
    assert main([*argv, "--task", "3"]) == 2
    assert "--task 3: no study for it" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "optuna_dashboard", None)  # as if not installed
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: optuna-dashboard is not installed: pip install "
                   "'optuna-dashboard==0.21.0' (a dependency of taskpack)"]
