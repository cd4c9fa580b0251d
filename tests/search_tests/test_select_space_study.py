"""Search building blocks: Pareto front, selection policies, space, resumable seeded studies."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pipeline.errors import RecipeError
from pipeline.recipe import LayerPlan, SearchConfig, SearchSpaceRule
from pipeline.tracking import NoopRun
from search import Point, pareto_front, resolve_space, select, suggest_plans
from search._space import previous_plan
from search._storage import fail_stale, open_storage
from search._study import enqueue_first, finished, make_sampler, open_study, retry_stale


def _pt(number: int, acc: float, ms: float, nbytes: float, feasible: bool = True,
        violation: float = 0.0) -> Point:
    return Point(number, {"accuracy": acc, "latency": ms, "bytes": nbytes}, feasible, violation)


PTS = [_pt(0, 98.0, 1.0, 100), _pt(1, 97.0, 0.5, 100), _pt(2, 96.0, 0.5, 100),
       _pt(3, 97.5, 0.7, 50), _pt(4, 99.0, 2.0, 200, feasible=False)]


def test_pareto_front() -> None:
    assert {p.number for p in pareto_front(PTS[:4])} == {0, 1, 3}
    # over the configured objectives only, each in its registered direction
    assert {p.number for p in pareto_front(PTS[:4], ["accuracy", "bytes"])} == {0, 3}
    assert {p.number for p in pareto_front(PTS[:4], ["latency"])} == {1, 2}


def test_knee_reads_directions_from_the_registry() -> None:
    # 0 is best on accuracy and bytes, 1 best on latency: the knee over (accuracy, bytes) is 0,
    # over (latency,) the fastest with the lowest number
    pts = [_pt(0, 99.0, 2.0, 10), _pt(1, 90.0, 0.5, 100)]
    assert select(pts, "knee", None, 99.0, ["accuracy", "bytes"])[0].number == 0
    assert select(pts, "knee", None, 99.0, ["latency"])[0].number == 1


def test_policies() -> None:
    p, why = select(PTS, "min_latency_within_acc_drop", 0.6, 98.0)
    assert p.number == 3 and "within 0.6 points" in why
    p, _ = select(PTS, "min_latency_within_acc_drop", 1.0, 98.0)
    assert p.number == 1
    p, why = select(PTS, "min_latency_within_acc_drop", 0.1, 99.5)
    assert p.number == 0 and "took the most accurate" in why  # nothing close: most accurate
    p, _ = select(PTS, "max_accuracy_under_latency_ms", 0.8, 98.0)
    assert p.number == 3
    p, why = select(PTS, "knee", None, 98.0)
    assert p.number in {0, 1, 3} and why.startswith("knee")
    infeasible = [_pt(7, 90.0, 1.0, 10, False, 2.5), _pt(8, 91.0, 1.0, 10, False, 0.5)]
    p, why = select(infeasible, "knee", None, 98.0)
    assert p.number == 8 and "no trial met the constraints" in why
    with pytest.raises(ValueError, match="no finished trial"):
        select([], "knee", None, 98.0)


def test_space_resolution_and_suggestion() -> None:
    rules = [SearchSpaceRule(match="backbone.4", sparsity=(0.5, 0.5), patterns=["channel"],
                             bits=[8]),
             SearchSpaceRule(match=r"backbone\.\d", sparsity=(0.0, 0.8), sparsity_step=0.2,
                             patterns=["unstructured", "block(16, 1)"], bits=[4, 8])]
    space = resolve_space(rules, ["backbone.1", "backbone.4"])
    assert space["backbone.4"].patterns == ("channel",)
    assert space["backbone.1"].patterns == ("unstructured", "block(16,1)")
    trial = optuna.trial.FixedTrial({"backbone.1.sparsity": 0.6, "backbone.1.pattern":
                                     "block(16,1)", "backbone.1.bits": 4})
    plans = suggest_plans(trial, space)
    assert plans == {"backbone.1": LayerPlan(sparsity=0.6, pattern="block(16,1)", bits=4),
                     "backbone.4": LayerPlan(sparsity=0.5, pattern="channel", bits=8)}
    with pytest.raises(RecipeError, match="no rule matches layer 'head'"):
        resolve_space([SearchSpaceRule(match="backbone.1")], ["head"])


def _objective(trial: optuna.Trial) -> tuple[float, float]:
    x = trial.suggest_float("x", 0, 1, step=0.1)
    c = trial.suggest_categorical("c", ["a", "b", "c"])
    trial.set_constraint("x", x - 0.8)
    return x + (c == "b"), (1 - x) ** 2


@pytest.mark.parametrize("kind", ["nsga2", "tpe", "random"])
def test_resumed_study_asks_what_an_uninterrupted_one_would(tmp_path: Path, kind: str) -> None:
    def params_of(study: optuna.Study) -> list[dict]:
        return [t.params for t in study.get_trials()]

    straight = open_study("s", open_storage(SearchConfig(), tmp_path / "a.journal"),
                          make_sampler(kind, 7), ["accuracy", "latency"])
    straight.optimize(_objective, n_trials=12)
    first = open_study("s", open_storage(SearchConfig(), tmp_path / "b.journal"),
                       make_sampler(kind, 7), ["accuracy", "latency"])
    first.optimize(_objective, n_trials=5)
    dangling = first.ask()  # a trial left RUNNING, as after a SIGKILL
    del dangling
    resumed = open_study("s", open_storage(SearchConfig(), tmp_path / "b.journal"),
                         make_sampler(kind, 7), ["accuracy", "latency"])
    states = [t.state for t in resumed.get_trials()]
    assert states[5] == optuna.trial.TrialState.FAIL  # the interrupted trial: not repeated
    assert finished(resumed) == 5  # the interrupted trial does not count toward the budget
    resumed.optimize(_objective, n_trials=7)
    done = [p for t, p in zip(resumed.get_trials(), params_of(resumed), strict=True)
            if t.state == optuna.trial.TrialState.COMPLETE]
    assert done == params_of(straight)  # every trial as in the uninterrupted study


def test_warm_start_is_the_first_trial_and_survives_an_interruption(tmp_path: Path) -> None:
    warm = {"x": 0.3, "c": "c"}

    def study(name: str) -> optuna.Study:
        return open_study("s", open_storage(SearchConfig(), tmp_path / name),
                          make_sampler("nsga2", 7), ["accuracy", "latency"])

    straight = study("a.journal")
    assert enqueue_first(straight, warm)
    straight.optimize(_objective, n_trials=6)
    assert straight.trials[0].params == warm and straight.trials[0].user_attrs["warm_start"]
    assert not enqueue_first(straight, {"x": 0.9, "c": "a"})  # a started study is left alone

    killed = study("b.journal")
    enqueue_first(killed, warm)
    dangling = killed.ask()  # the warm trial, left RUNNING as after a SIGKILL
    assert dangling.suggest_float("x", 0, 1, step=0.1) == warm["x"]
    resumed = study("b.journal")
    assert not enqueue_first(resumed, warm)
    resumed.optimize(_objective, n_trials=6)
    done = [t.params for t in resumed.get_trials()
            if t.state == optuna.trial.TrialState.COMPLETE]
    assert done == [t.params for t in straight.get_trials()]


def test_previous_plan_reads_the_previous_tasks_choice(tmp_path: Path) -> None:
    import json

    space = resolve_space([SearchSpaceRule(match=".*", patterns=["unstructured", "block(4,1)"],
                                           bits=[4, 8])], ["fc1", "fc2"])
    assert previous_plan(tmp_path, 0, space) is None
    assert previous_plan(tmp_path, 1, space) is None  # task 0 has not chosen yet
    (tmp_path / "task-0").mkdir()
    params = {"fc1.sparsity": 0.6, "fc1.pattern": "block(4,1)", "fc1.bits": 4,
              "fc2.sparsity": 0.5, "fc2.pattern": "unstructured", "fc2.bits": 8,
              "gone.sparsity": 0.9}
    (tmp_path / "task-0" / "chosen.json").write_text(json.dumps({"trial": 3, "params": params}))
    assert previous_plan(tmp_path, 1, space) == {k: v for k, v in params.items()
                                                 if not k.startswith("gone")}


def test_a_journal_trial_whose_process_is_gone_is_failed_and_asked_again(tmp_path: Path) -> None:
    """Journal studies have no heartbeats; their workers share this machine, so a running trial
    whose process id names no live process is dead."""
    storage = open_storage(SearchConfig(), tmp_path / "j.journal")
    study = open_study("s", storage, make_sampler("random", 7), ["accuracy"], worker=True)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead = study.ask()
    x = dead.suggest_float("x", 0, 1)
    dead.set_user_attr("pid", int(gone.stdout))
    alive = study.ask()
    alive.set_user_attr("pid", os.getpid())
    fail_stale(study, storage, retry_stale(NoopRun()))
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    assert study.get_trials()[2].params == {"x": x} and finished(study) == 0
