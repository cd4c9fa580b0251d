"""The dense reference and the guard: never commit a plan slower than the task as trained.

A real TaskProblem (tiny TSN task, real store, real Optuna study and NoopRun tracking) with a
deterministic latency function passed through ``latency_fn``: latency grows (or shrinks) with the
number of zero weights of the compiled task, so which plan is faster is known exactly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.compress import CompressContext, task_tensors, trained_layers
from pipeline.methods import TSN
from pipeline.recipe import LayerPlan, SearchConfig, TrainConfig, recipe_from_dict
from pipeline.store import PackedStore
from pipeline.tracking import NoopRun
from pipeline.train import train_task
from search._dense import guard
from search._driver import search_task
from search._objective import Latency, TaskProblem
from search._select import DENSE, Point
from search._space import resolve_space
from tests.pipeline_tests._tiny import tiny_mlp, tiny_task

Fake = Callable[[nn.Module, torch.Tensor], Latency]


def zeros_latency(sign: float) -> Fake:
    """1 ms + sign * (fraction of zero weights): sign > 0 makes pruning slower, < 0 faster."""
    def latency(module: nn.Module, example: torch.Tensor) -> Latency:
        ws = [m.weight for m in module.modules() if isinstance(m, nn.Linear)]
        zeros = sum(int((w == 0).sum()) for w in ws) / sum(w.numel() for w in ws)
        ms = 1.0 + sign * zeros
        return Latency(ms, ms * 1.1)

    return latency


def _problem(tmp_path: Path, latency_fn: Fake) -> TaskProblem:
    model = tiny_mlp(hidden=(32, 32))
    cfg = recipe_from_dict({"name": "t", "method": {"kind": "tsn", "density": 0.5}}).method
    method = TSN(model, cfg)
    task = tiny_task(0, n=192)
    model.add_task(task.num_classes)
    train_task(method, 0, task, TrainConfig(lr=0.01, epochs=2, batch_size=16,
                                            eval_batch_size=64))
    trained = trained_layers(method, 0, method.end_task(0))
    ctx = CompressContext(model, 0, task_tensors(model, 0), task, 64)
    store = PackedStore.create(tmp_path / "s.tpk", model.layer_shapes(), "tiny")
    return TaskProblem(ctx, trained, store, set(), ctx.accuracy(trained),
                       example=task.val.x[:1].contiguous(), latency_fn=latency_fn)


def _search(tmp_path: Path, latency_fn: Fake, **cfg) -> tuple:
    problem = _problem(tmp_path, latency_fn)
    config = SearchConfig.model_validate({
        "enabled": True, "trials": 3, "sampler": "random",
        "space": [{"match": ".*", "sparsity": [0.3, 0.6], "sparsity_step": 0.3,
                   "patterns": ["unstructured"], "bits": [8]}],
        "constraints": {"max_acc_drop": None},
        "selection": {"policy": "min_latency_within_acc_drop", "value": 100.0}, **cfg})
    space = resolve_space(config.space, list(problem.trained))
    run = NoopRun("task-0")
    out = search_task(problem, config, space, run, tmp_path / "j.journal", "t-0",
                      tmp_path / "task-0")
    return problem, run, out


def _children(run: NoopRun) -> dict[str, NoopRun]:
    return {c.run_id.split("/")[-1]: c for c in run.children}


def test_slower_trials_fall_back_to_the_dense_plan(tmp_path: Path) -> None:
    # objectives [bytes]: the front is the smallest trial, which prunes and so is slower here
    problem, run, out = _search(tmp_path, zeros_latency(+1.0), objectives=["bytes"])
    s = out.stats
    assert s["search_fell_back_to_dense"] == 1.0 and out.trial == DENSE == s["search_chosen_trial"]
    assert out.plans == {n: LayerPlan() for n in problem.trained}  # sparsity 0, fp32
    assert s["search_chosen_latency_ms"] == s["search_dense_latency_ms"]
    assert s["search_speedup_vs_dense"] == 1.0
    assert s["search_chosen_val_acc"] == pytest.approx(s["search_reference_val_acc"])
    assert s["search_trials"] == 3.0  # the reference took no trial from the budget
    assert "not faster than the dense reference" in out.reason
    assert run.tags["search.fell_back_to_dense"] == "true"
    assert run.tags["search.chosen_trial"] == "-1"
    runs = _children(run)
    assert sorted(runs) == ["dense-reference", "trial-0", "trial-1", "trial-2"]
    ref = runs["dense-reference"]
    assert ref.tags["chosen"] == "true" and ref.tags["taskpack.reference"] == "dense"
    assert ref.metrics["latency_median_ms"] == s["search_dense_latency_ms"]
    assert {"val_accuracy", "store_bytes", "latency_p90_ms"} <= ref.metrics.keys()
    assert all(runs[f"trial-{i}"].tags["chosen"] == "false" for i in range(3))
    chosen = json.loads((tmp_path / "task-0" / "chosen.json").read_text())
    assert chosen["dense"] and chosen["params"] == {}  # the next task gets no warm start
    csv = (tmp_path / "task-0" / "pareto.csv").read_text().splitlines()
    assert any(line.startswith("-1,True,") for line in csv[1:])


def test_faster_trials_are_kept_and_the_speedup_reported(tmp_path: Path) -> None:
    problem, run, out = _search(tmp_path, zeros_latency(-1.0))
    s = out.stats
    assert s["search_fell_back_to_dense"] == 0.0 and out.trial >= 0
    assert s["search_chosen_latency_ms"] < s["search_dense_latency_ms"]
    assert s["search_speedup_vs_dense"] == pytest.approx(
        s["search_dense_latency_ms"] / s["search_chosen_latency_ms"])
    assert s["search_speedup_vs_dense"] > 1.0
    assert run.tags["search.fell_back_to_dense"] == "false"
    assert _children(run)["dense-reference"].tags["chosen"] == "false"


def test_a_failed_dense_measurement_does_not_stop_the_search(tmp_path: Path) -> None:
    faster = zeros_latency(-1.0)
    calls = []

    def first_call_fails(module: nn.Module, example: torch.Tensor) -> Latency:
        calls.append(1)
        if len(calls) == 1:  # the dense reference is measured first
            raise RuntimeError("compile failed")
        return faster(module, example)

    _, run, out = _search(tmp_path, first_call_fails)
    assert out.stats["search_dense_measured"] == 0.0 and out.trial >= 0
    assert run.tags["search.dense_reference"].startswith("failed: RuntimeError")
    assert _children(run)["dense-reference"].status == "FAILED"


def _cfg(**kw) -> SearchConfig:
    return SearchConfig.model_validate(kw)


def _p(number: int, ms: float, feasible: bool = True) -> Point:
    return Point(number, {"accuracy": 97.0, "latency": ms, "bytes": 10.0}, feasible)


def test_guard_rules() -> None:
    dense = _p(DENSE, 1.0)
    assert guard(_p(3, 0.9), "r", dense, _cfg())[2] is False  # faster: kept
    point, why, fell = guard(_p(3, 1.0), "r", dense, _cfg())  # a tie is not faster
    assert fell and point is dense and "trial 3 (r) measured 1.0000 ms" in why
    assert guard(_p(3, 2.0), "r", None, _cfg())[2] is False  # no reference measured
    # the recipe ignores latency (objectives, knee policy, no latency limit): no guard
    ignore = _cfg(objectives=["accuracy", "bytes"], selection={"policy": "knee"})
    assert guard(_p(3, 2.0), "r", dense, ignore)[2] is False
    limited = _cfg(objectives=["accuracy", "bytes"], selection={"policy": "knee"},
                   constraints={"max_latency_ms": 5.0})
    assert guard(_p(3, 2.0), "r", dense, limited)[2] is True
    # the dense plan breaks a constraint the trial meets: the trial is kept, with a warning
    point, why, fell = guard(_p(3, 2.0), "r", _p(DENSE, 1.0, feasible=False), _cfg())
    assert not fell and point.number == 3 and "which breaks the constraints" in why


def test_search_table_shows_the_dense_reference() -> None:
    from types import SimpleNamespace

    from rich.console import Console

    from pipeline.report import search_table

    base = {"search_chosen_val_acc": 97.0, "search_reference_val_acc": 97.5,
            "search_chosen_latency_ms": 0.05, "search_chosen_bytes": 1000.0,
            "search_trials": 4.0, "search_front_size": 2.0}
    tasks = [SimpleNamespace(index=0, compression={**base, "search_chosen_trial": 3.0,
                                                   "search_dense_latency_ms": 0.1,
                                                   "search_speedup_vs_dense": 2.0}),
             SimpleNamespace(index=1, compression={**base, "search_chosen_trial": -1.0,
                                                   "search_fell_back_to_dense": 1.0,
                                                   "search_dense_latency_ms": 0.05,
                                                   "search_speedup_vs_dense": 1.0}),
             SimpleNamespace(index=2, compression={**base, "search_chosen_trial": 1.0})]
    console = Console(width=200, record=True)
    console.print(search_table(SimpleNamespace(tasks=tasks)))
    text = console.export_text()
    assert "2.00x" in text and "dense (fallback)" in text and "0.100" in text
