"""The Objective contract (Optuna style): every registered objective passes ``ObjectiveContract``.

A new objective gets its own ``TestX(ObjectiveContract)`` subclass here;
``test_every_registered_objective_has_a_contract_test`` fails until it has one.
"""

from __future__ import annotations

import math
from typing import ClassVar

import optuna
import pytest

from pipeline.recipe import SearchConstraints
from search._objective import Latency, TrialResult
from search._pareto import FrontContext, write_front
from search._select import Point, pareto_front
from search._study import make_sampler, open_study
from search.objectives import (
    DIRECTIONS,
    Objective,
    ScoreContext,
    constraints,
    directions,
    get_objective,
    register_objective,
    registered,
    resolve,
    scores,
    trial_metrics,
    unregister_objective,
)

CTX = ScoreContext(reference_accuracy=98.0)
LIMITS = SearchConstraints(max_acc_drop=1.0, max_latency_ms=1.0, max_bytes=2000)
NO_LIMITS = SearchConstraints(max_acc_drop=None, max_latency_ms=None, max_bytes=None)


def sample_result(accuracy: float = 97.5, ms: float = 0.4, nbytes: int = 1234) -> TrialResult:
    return TrialResult(plans={}, layers={}, tensors={}, accuracy=accuracy,
                       latency=Latency(ms, ms * 1.2), nbytes=nbytes, seconds=0.1)


class ObjectiveContract:
    """What every registered objective must satisfy; subclasses set ``objective_name``."""

    objective_name: ClassVar[str]

    @pytest.fixture
    def objective(self) -> Objective:
        return get_objective(self.objective_name)

    def test_registered_once_under_its_name(self, objective: Objective) -> None:
        assert objective.name == self.objective_name
        assert [n for n in registered() if n == objective.name] == [objective.name]
        with pytest.raises(ValueError, match="must be unique"):
            register_objective(type(objective))

    def test_direction_is_valid_and_used_by_the_study(self, objective: Objective,
                                                      tmp_path) -> None:
        assert objective.direction in DIRECTIONS
        assert directions([objective.name]) == [objective.direction]
        study = open_study("s", None, make_sampler("random", 0), [objective.name])
        expected = optuna.study.StudyDirection[objective.direction.upper()]
        assert study.directions == [expected]

    def test_value_of_a_sample_result_is_finite(self, objective: Objective) -> None:
        value = objective.value(sample_result(), CTX)
        assert isinstance(value, float) and math.isfinite(value)
        assert scores(sample_result(), CTX)[objective.name] == value

    def test_better_follows_the_direction(self, objective: Objective) -> None:
        hi, lo = 2.0, 1.0
        assert objective.better(hi, lo) == (objective.direction == "maximize")
        assert objective.no_worse(hi, hi) and not objective.better(hi, hi)
        a = Point(0, {objective.name: hi})
        b = Point(1, {objective.name: lo})
        best = a if objective.direction == "maximize" else b
        assert pareto_front([a, b], [objective.name]) == [best]

    def test_logging_produces_the_declared_metric(self, objective: Objective) -> None:
        metrics = objective.metrics(sample_result(), CTX)
        assert metrics[objective.metric] == objective.value(sample_result(), CTX)
        assert all(math.isfinite(v) for v in metrics.values())
        assert trial_metrics(sample_result(), CTX)[objective.metric] == metrics[objective.metric]
        assert objective.format(metrics[objective.metric])

    def test_constraint_hook(self, objective: Objective) -> None:
        value = objective.value(sample_result(), CTX)
        assert objective.constraint(value, NO_LIMITS, CTX) is None
        c = objective.constraint(value, LIMITS, CTX)
        if c is not None:  # an objective with a limit in the recipe names its constraint
            assert math.isfinite(c) and objective.constraint_name
            named = constraints({objective.name: value}, LIMITS, CTX)
            assert named[objective.constraint_name] == c

    def test_pareto_csv_has_a_column_for_it(self, objective: Objective, tmp_path) -> None:
        pts = [Point(0, scores(sample_result(), CTX)), Point(1, scores(sample_result(90.0), CTX))]
        csv = write_front(pts, pts[0], {}, tmp_path / "task-0",
                          FrontContext(0, "host", "a reason", CTX.reference_accuracy),
                          [objective.name])[0]
        assert objective.metric in csv.read_text().splitlines()[0].split(",")


class TestAccuracy(ObjectiveContract):
    objective_name = "accuracy"

    def test_constraint_is_the_drop_over_the_limit(self, objective: Objective) -> None:
        assert objective.constraint(97.5, LIMITS, CTX) == pytest.approx(98.0 - 97.5 - 1.0)
        assert objective.metrics(sample_result(), CTX)["acc_drop"] == pytest.approx(0.5)


class TestLatency(ObjectiveContract):
    objective_name = "latency"

    def test_logs_the_p90_too(self, objective: Objective) -> None:
        assert objective.metrics(sample_result(ms=0.5), CTX)["latency_p90_ms"] == 0.6


class TestBytes(ObjectiveContract):
    objective_name = "bytes"


def test_every_registered_objective_has_a_contract_test() -> None:
    tested = {c.objective_name for c in ObjectiveContract.__subclasses__()}
    assert set(registered()) <= tested, "add a TestX(ObjectiveContract) for each objective"


def test_a_registered_objective_is_one_class_away() -> None:
    @register_objective
    class Energy(Objective):
        name = "energy"
        direction = "minimize"
        metric = "energy_mj"
        stat = "energy_mj"

        def value(self, result: TrialResult, ctx: ScoreContext) -> float:
            return result.latency.median_ms * 2.0

    try:
        assert directions(["accuracy", "energy"]) == ["maximize", "minimize"]
        assert scores(sample_result(ms=0.5), CTX)["energy"] == 1.0
        assert trial_metrics(sample_result(ms=0.5), CTX)["energy_mj"] == 1.0
        fast, slow = Point(0, {"energy": 1.0}), Point(1, {"energy": 3.0})
        assert pareto_front([fast, slow], ["energy"]) == [fast]
    finally:
        unregister_objective("energy")
    assert "energy" not in registered()


def test_registry_errors_say_what_must_hold() -> None:
    with pytest.raises(ValueError, match=r"must be one of \[.*'latency'.*\], got 'speed'"):
        get_objective("speed")
    with pytest.raises(ValueError, match="must not repeat"):
        resolve(["accuracy", "accuracy"])

    class Sideways(Objective):
        name = "sideways"
        direction = "up"  # type: ignore[assignment]
        metric = stat = "x"

        def value(self, result: TrialResult, ctx: ScoreContext) -> float:
            return 0.0

    with pytest.raises(ValueError, match="direction must be one of .*got 'up'"):
        register_objective(Sideways)
    assert "sideways" not in registered()
