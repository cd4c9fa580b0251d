"""A run killed with SIGKILL in the middle of a commit leaves the previous store intact, and
re-running the recipe continues after the last committed task with the same result as a run that
was never interrupted (real subprocess, real MNIST; marked slow)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipeline.recipe import load_recipe
from pipeline.runner import run_recipe
from pipeline.store import SLEEP_ENV, PackedStore

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SETTINGS = ["benchmark.train_limit=1000", "benchmark.test_limit=300", "train.epochs=1",
            "train.batch_size=32", "benchmark.val_fraction=0.05", "model.hidden=[64, 64]",
            "method.kind=tsn", "compression.default.sparsity=0.3",
            "compression.default.bits=8", "method.prune.steps=4", "tracking.enabled=false"]


def _cli(out: Path, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "pipeline.cli", "run", str(REPO / "recipes/quickstart.yaml")]
    for s in [*SETTINGS, f"output_dir={out}"]:
        args += ["--set", s]
    return subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO),
                                            **(extra_env or {})})


def _close_pipes(proc: subprocess.Popen) -> None:
    """A killed process's pipes are not read: close them (else ResourceWarning: unclosed file).
    Not communicate(): a grandchild that inherited the pipes could keep them open."""
    for pipe in (proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def test_sigkill_during_commit_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    run_dir = tmp_path / "killed" / "quickstart"
    store_path = run_dir / "store.tpk"
    proc = _cli(tmp_path / "killed", {SLEEP_ENV: "30"})
    deadline = time.monotonic() + 240
    # the second commit (task 1) is in flight once its pre-commit state and temp file exist
    while time.monotonic() < deadline:
        if (run_dir / "state-2.npz").exists() and list(run_dir.glob(".store.tpk.*.tmp")):
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    else:
        proc.kill()
        proc.wait()
        _close_pipes(proc)
        pytest.fail("the run never reached the second commit")
    before_kill = store_path.read_bytes()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    _close_pipes(proc)
    assert proc.returncode == -signal.SIGKILL
    # the previous store is readable and intact: exactly task 0, same bytes as before the kill
    assert store_path.read_bytes() == before_kill
    assert PackedStore.open(store_path).num_tasks == 1
    assert list(run_dir.glob(".store.tpk.*.tmp"))  # the killed commit's full-size temp file

    resumed = _cli(tmp_path / "killed")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "continued after 1 committed task(s)" in out
    assert not list(run_dir.glob(".store.tpk.*.tmp")), "the next start removes it"

    # the uninterrupted run: also a fresh process, so both use the same torch thread count
    straight = _cli(tmp_path / "straight")
    _, err = straight.communicate(timeout=300)
    assert straight.returncode == 0, err
    straight_store = tmp_path / "straight" / "quickstart" / "store.tpk"
    a, b = PackedStore.open(store_path), PackedStore.open(straight_store)
    assert a.num_tasks == b.num_tasks == 3
    for t in range(3):
        wa, wb = a.materialize(t), b.materialize(t)
        assert wa.keys() == wb.keys()
        assert all(torch.equal(wa[k], wb[k]) for k in wa), f"task {t} differs after resume"
    assert store_path.read_bytes() == straight_store.read_bytes()


def test_rerunning_a_finished_recipe_does_no_work_and_fresh_starts_over(tmp_path: Path) -> None:
    recipe = load_recipe(REPO / "recipes/quickstart.yaml",
                         [*SETTINGS, "benchmark.tasks=2", f"output_dir={tmp_path}"])
    first = run_recipe(recipe)
    again = run_recipe(recipe)
    assert again.resumed_from == 2
    assert again.matrix.rows == first.matrix.rows
    # each task's training report (seconds, examples seen) survives the resume
    assert [r.train for r in again.tasks] == [r.train for r in first.tasks]
    assert all(r.train is not None and r.train.stats["examples_seen"] > 0 for r in again.tasks)
    assert [r.resumed for r in again.tasks] == [True, True]
    assert not any(r.resumed for r in first.tasks)
    # the wall time covers the whole run, the part done by the earlier process included
    recorded = json.loads((first.run_dir / "progress.json").read_text())["wall_s"]
    assert 0 < recorded <= first.wall_s
    assert recorded < again.wall_s < first.wall_s + 30
    fresh = run_recipe(recipe, fresh=True)
    assert fresh.resumed_from == 0
    assert fresh.matrix.rows == first.matrix.rows  # seeded: the same run again
