"""CLNP and NISPA keep state beyond the store (active / stable units, NISPA's links): a run
stopped in the middle of a task's training and re-run continues to the byte-identical store of
a run never stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pipeline.methods import method_class
from pipeline.recipe import Recipe, recipe_from_dict
from pipeline.runner import run_recipe
from pipeline.store import PackedStore

METHODS = [
    {"kind": "clnp", "margin": 1.0, "threshold_step": 0.05},
    {"kind": "nispa", "density": 0.3, "phase_epochs": 1, "k": 4, "margin": 2.0},
]


class _Killed(Exception):
    pass


def _recipe(method: dict[str, Any], out: Path) -> Recipe:
    return recipe_from_dict({
        "name": "stopped", "method": method, "output_dir": str(out),
        "benchmark": {"stream": "permuted_mnist", "tasks": 3, "train_limit": 200,
                      "test_limit": 50, "val_fraction": 0.2},
        "model": {"arch": "mlp", "hidden": [32, 32]},
        "train": {"epochs": 1, "lr": 0.01, "batch_size": 32, "eval_batch_size": 50},
        "compression": {"default": {"sparsity": 0.3, "bits": 8}}})


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS, ids=[m["kind"] for m in METHODS])
def test_stopped_during_a_task_then_rerun_gives_the_same_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: dict[str, Any]) -> None:
    whole = run_recipe(_recipe(method, tmp_path / "whole"))
    cls = method_class(method["kind"])
    original = cls.after_step
    steps = {"n": 0}

    def stop_in_task_2(self, task: int) -> None:  # noqa: ANN001
        original(self, task)
        if task == 2:
            steps["n"] += 1
            if steps["n"] == 3:  # mid-epoch of task 2: nothing of it is on disk yet
                raise _Killed

    monkeypatch.setattr(cls, "after_step", stop_in_task_2)
    stopped = _recipe(method, tmp_path / "stopped")
    with pytest.raises(_Killed):
        run_recipe(stopped)
    monkeypatch.undo()
    store_path = stopped.output_dir / stopped.name / "store.tpk"
    assert PackedStore.open(store_path).num_tasks == 2
    resumed = run_recipe(stopped)
    assert resumed.resumed_from == 2
    assert resumed.store_path.read_bytes() == whole.store_path.read_bytes()
    assert resumed.matrix.as_list() == whole.matrix.as_list()
    assert resumed.bwt == 0.0
