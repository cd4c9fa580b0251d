"""Any error of one trial fails that trial, with its reason, and the search goes on.

A real search (``SearchCompressor`` on a tiny trained TSN task, a real Optuna journal study, a
real store, latency measured by the real eager compiler); only the failure is forced, by
patching one call of the compiler's build, its measurement or the trial's fine-tuning.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

import compilers
from compilers import EagerCompiler
from compilers.errors import BuildFailed, RunTimedOut
from pipeline.recipe import recipe_from_dict
from pipeline.session import Session, TaskContext
from pipeline.tracking import NoopRun
from search import SearchCompressor, study_name
from search._storage import open_storage
from tests.pipeline_tests._tiny import trained_tiny_session

TRIALS = 4


def _session(tmp_path: Path) -> tuple[Session, TaskContext, NoopRun]:
    recipe = recipe_from_dict({
        "name": "f", "output_dir": str(tmp_path / "runs"),
        "method": {"kind": "tsn", "density": 0.5},
        "targets": [{"name": "host", "backend": "eager"}],
        "search": {"enabled": True, "trials": TRIALS, "sampler": "random", "finetune_epochs": 1,
                   "warm_start": False,
                   "space": [{"match": ".*", "sparsity": [0.3, 0.6], "sparsity_step": 0.3,
                              "patterns": ["unstructured"], "bits": [8]}],
                   "constraints": {"max_acc_drop": None},
                   "selection": {"policy": "min_latency_within_acc_drop", "value": 100.0}}})
    run = NoopRun("task-0")
    s, ctx = trained_tiny_session(recipe, tmp_path / "s.tpk", tmp_path / "run", run)
    return s, ctx, run


def _fail_once(monkeypatch: pytest.MonkeyPatch, owner: object, name: str, call: int,
               exc: BaseException) -> None:
    """Make the ``call``-th call of ``owner.name`` raise ``exc`` (the others run for real)."""
    real = getattr(owner, name)
    calls = []

    def patched(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        if len(calls) == call:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, patched)


def _trials(s: Session) -> list[optuna.trial.FrozenTrial]:
    storage = open_storage(s.recipe.search, s.run_dir / "search" / "task-0.journal")
    return optuna.load_study(study_name=study_name(s.recipe, 0), storage=storage).get_trials()


# (what fails, which call: the dense reference is the first build/measurement, and is not
# fine-tuned), the error, the reason recorded
FAILURES = {
    "build": (EagerCompiler, "compile", 2, BuildFailed("relax.build: no schedule for dense"),
              "BuildFailed: relax.build: no schedule for dense"),
    "measurement": (compilers, "measure", 2, RunTimedOut("run exceeded 10 s"),
                    "RunTimedOut: run exceeded 10 s"),
    "out of memory in fine-tuning": (
        "search._objective", "finetune_own", 1,
        torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
        "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"),
}


@pytest.mark.parametrize("what", list(FAILURES))
def test_a_failing_trial_is_failed_with_its_reason_and_the_search_goes_on(
        what: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    owner, name, call, exc, reason = FAILURES[what]
    if isinstance(owner, str):
        import importlib

        owner = importlib.import_module(owner)
    _fail_once(monkeypatch, owner, name, call, exc)
    s, ctx, run = _session(tmp_path)
    out = SearchCompressor(s.recipe).compress(s, ctx)

    trials = _trials(s)
    assert len(trials) == TRIALS  # the failed trial counts toward the budget
    (failed,) = [t for t in trials if t.state == TrialState.FAIL]
    assert failed.user_attrs["failure_reason"] == reason
    assert [t.state for t in trials].count(TrialState.COMPLETE) == TRIALS - 1
    child = {c.run_id.split("/")[-1]: c for c in run.children}[f"trial-{failed.number}"]
    assert child.status == "FAILED" and child.tags["failure_reason"] == reason
    assert out.stats["search_trials"] == TRIALS and out.stats["search_failures"] == 1
    assert set(out.layers) == set(s.model.layer_shapes())  # and a plan was chosen to commit


def test_ctrl_c_in_a_trial_stops_the_search(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _fail_once(monkeypatch, EagerCompiler, "compile", 2, KeyboardInterrupt())
    s, ctx, _ = _session(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        SearchCompressor(s.recipe).compress(s, ctx)
    (trial,) = _trials(s)  # left running: a resumed run fails it as interrupted, uncounted
    assert trial.state == TrialState.RUNNING
