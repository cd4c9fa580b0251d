"""A run interrupted during a task's search continues it without training the task again: it
says so, reuses ``search/task-K-trained.npz``, and commits what an uninterrupted run commits.

Real MNIST (small), real runner, real Optuna journal study; latency from a deterministic
function of the compiled module (``nonzeros_latency``) so the search is fast and repeatable.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import pipeline.stages
import search._driver
from pipeline.recipe import load_recipe
from pipeline.runner import run_recipe
from pipeline.store import PackedStore
from search import SearchCompressor
from tests.search_tests.test_compressor_search import nonzeros_latency

REPO = Path(__file__).resolve().parents[2]
SETTINGS = ["benchmark.tasks=2", "benchmark.train_limit=300", "benchmark.test_limit=100",
            "benchmark.val_fraction=0.005", "model.hidden=[32]", "train.epochs=1",
            "train.batch_size=64", "method.prune.steps=2", "method.prune.finetune_epochs=0",
            "search.trials=3", "search.sampler=random", "search.constraints.max_acc_drop=null",
            "search.selection.value=100.0", "tracking.enabled=false",
            "targets=[{name: host, backend: eager}]"]


def _run(out: Path):  # noqa: ANN202
    recipe = load_recipe(REPO / "recipes/quickstart.yaml", [*SETTINGS, f"output_dir={out}"])
    return run_recipe(recipe, compressor=SearchCompressor(recipe, nonzeros_latency))


def _count_training(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    trained: list[int] = []
    real = pipeline.stages.train_task

    def counting(method, task, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        trained.append(task)
        return real(method, task, *args, **kwargs)

    monkeypatch.setattr(pipeline.stages, "train_task", counting)
    return trained


@pytest.mark.slow  # three small runs on real MNIST (about 50 s on 2 cores)
def test_interrupted_search_resumes_from_the_trained_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # Ctrl-C after task 1's second trial
    real_step, steps = search._driver._step, []

    def interrupting(study, storage, problem, *args):  # noqa: ANN001, ANN002, ANN202
        if problem.ctx.task == 1:
            steps.append(1)
            if len(steps) == 3:
                raise KeyboardInterrupt
        return real_step(study, storage, problem, *args)

    with monkeypatch.context() as m:
        m.setattr(search._driver, "_step", interrupting)
        with pytest.raises(KeyboardInterrupt):
            _run(tmp_path / "runs")
    run_dir = tmp_path / "runs" / "quickstart"
    checkpoint = run_dir / "search" / "task-1-trained.npz"
    assert checkpoint.is_file() and PackedStore.open(run_dir / "store.tpk").num_tasks == 1

    trained = _count_training(monkeypatch)
    with caplog.at_level(logging.INFO, logger="search"):
        resumed = _run(tmp_path / "runs")
    assert trained == []  # task 0 was committed, task 1 came from its checkpoint
    assert (f"resuming task 1 after trial 1 (2 of 3 trials done), reusing the trained "
            f"checkpoint {checkpoint}") in caplog.text
    assert not checkpoint.exists()  # retracted once the task was searched

    trained.clear()
    whole = _run(tmp_path / "whole")
    assert trained == [0, 1]
    # the same committed tasks as a run that was never interrupted
    assert (run_dir / "store.tpk").read_bytes() == \
        (tmp_path / "whole" / "quickstart" / "store.tpk").read_bytes()
    assert resumed.matrix.rows == whole.matrix.rows


def test_a_damaged_checkpoint_is_trained_again(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = load_recipe(REPO / "recipes/quickstart.yaml",
                         [*SETTINGS, f"output_dir={tmp_path}", "benchmark.tasks=1"])
    folder = tmp_path / "quickstart" / "search"
    folder.mkdir(parents=True)
    (folder / "task-0-trained.npz").write_bytes(b"not an npz")
    (folder / "task-0-trained.json").write_text('{"task": 0}')
    trained = _count_training(monkeypatch)
    run_recipe(recipe, compressor=SearchCompressor(recipe, nonzeros_latency))
    assert trained == [0]


@pytest.mark.parametrize("kind", ["clnp", "nispa"])  # the searchable ones (PackNet is not)
def test_a_method_whose_end_task_changes_weights_trains_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        kind: str) -> None:
    """CLNP cuts and re-initialises, NISPA rewires in ``end_task``: a checkpoint taken after it
    cannot go through ``end_task`` a second time, so the task is trained again."""
    recipe = load_recipe(REPO / "recipes/quickstart.yaml",
                         [*SETTINGS, f"output_dir={tmp_path}", "benchmark.tasks=1",
                          f"method={{kind: {kind}}}"])
    folder = tmp_path / "quickstart" / "search"
    folder.mkdir(parents=True)
    (folder / "task-0-trained.npz").write_bytes(b"never read")
    (folder / "task-0-trained.json").write_text('{"task": 0}')
    trained = _count_training(monkeypatch)
    with caplog.at_level(logging.INFO, logger="search"):
        run_recipe(recipe, compressor=SearchCompressor(recipe, nonzeros_latency))
    assert trained == [0]
    assert "cannot be reused; training the task again" in caplog.text
