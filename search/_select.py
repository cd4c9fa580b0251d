"""Selection policies: which feasible Pareto point a task commits, and why (said in words).

Points carry every registered objective's value (``scores``); the Pareto front and the knee are
taken over the objectives the search was configured with, each in its registered direction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from search.objectives import get_objective

DENSE = -1  # the number of the dense reference point (not an Optuna trial)


@dataclass(frozen=True)
class Point:
    """One candidate's scores: a finished trial, or the dense reference (``number == DENSE``)."""

    number: int
    scores: Mapping[str, float] = field(default_factory=dict)  # objective name -> value
    feasible: bool = True
    violation: float = 0.0  # sum of positive constraint values (0 when feasible)

    def score(self, name: str) -> float:
        """The value of objective ``name``; NaN when the point has none."""
        return float(self.scores.get(name, math.nan))

    @property
    def dense(self) -> bool:
        return self.number == DENSE

    @property
    def accuracy(self) -> float:
        return self.score("accuracy")

    @property
    def latency_ms(self) -> float:
        return self.score("latency")

    @property
    def nbytes(self) -> float:
        return self.score("bytes")

    @property
    def label(self) -> str:
        return "the dense reference" if self.dense else f"trial {self.number}"


def _names(points: Sequence[Point], objectives: Sequence[str] | None) -> list[str]:
    if objectives is not None:
        return list(objectives)
    return list(points[0].scores) if points else []


def dominates(a: Point, b: Point, objectives: Sequence[str]) -> bool:
    """``a`` is no worse than ``b`` on every objective and better on one."""
    objs = [get_objective(n) for n in objectives]
    return (all(o.no_worse(a.score(o.name), b.score(o.name)) for o in objs)
            and any(o.better(a.score(o.name), b.score(o.name)) for o in objs))


def pareto_front(points: Sequence[Point],
                 objectives: Sequence[str] | None = None) -> list[Point]:
    """Points no other point beats on all ``objectives`` (default: every score they carry)."""
    names = _names(points, objectives)
    return [p for p in points if not any(dominates(q, p, names) for q in points if q is not p)]


def select(points: Sequence[Point], policy: str, value: float | None,
           reference_accuracy: float,
           objectives: Sequence[str] | None = None) -> tuple[Point, str]:
    """The chosen point and a sentence saying why.

    Infeasible points are chosen only when no point is feasible: then the one that breaks the
    constraints least, so a run never loses a trained task to a too-strict constraint.
    """
    if not points:
        raise ValueError("no finished trial to select from")
    names = _names(points, objectives)
    feasible = [p for p in points if p.feasible]
    if not feasible:
        best = min(points, key=lambda p: (p.violation, -p.accuracy, p.number))
        return best, (f"no trial met the constraints: took {best.label}, the least "
                      f"violating (violation {best.violation:.3g})")
    front = pareto_front(feasible, names)
    if policy == "min_latency_within_acc_drop":
        if value is None:
            raise ValueError(f"policy {policy!r} needs a value (the accuracy drop), got None")
        ok = [p for p in front if reference_accuracy - p.accuracy <= value]
        if ok:
            best = min(ok, key=lambda p: (p.latency_ms, p.nbytes, -p.accuracy, p.number))
            return best, (f"fastest of {len(ok)} front point(s) within {value} points of the "
                          f"uncompressed accuracy {reference_accuracy:.2f}")
        best = max(front, key=lambda p: (p.accuracy, -p.latency_ms, p.number))
        return best, (f"no front point within {value} points of {reference_accuracy:.2f}: "
                      "took the most accurate")
    if policy == "max_accuracy_under_latency_ms":
        if value is None:
            raise ValueError(f"policy {policy!r} needs a value (the latency in ms), got None")
        ok = [p for p in front if p.latency_ms <= value]
        if ok:
            best = max(ok, key=lambda p: (p.accuracy, -p.latency_ms, -p.nbytes, -p.number))
            return best, f"most accurate of {len(ok)} front point(s) under {value} ms"
        best = min(front, key=lambda p: (p.latency_ms, p.number))
        return best, f"no front point under {value} ms: took the fastest"
    return _knee(front, names)


def _knee(front: Sequence[Point], objectives: Sequence[str]) -> tuple[Point, str]:
    """The front point closest to the ideal corner after min-max normalising each objective
    (the ideal is each objective's best value on the front, in its registered direction)."""
    objs = [get_objective(n) for n in objectives]
    corner: dict[str, tuple[float, float]] = {}
    for o in objs:
        vals = [p.score(o.name) for p in front]
        lo, hi = min(vals), max(vals)
        corner[o.name] = (hi if o.direction == "maximize" else lo, (hi - lo) or 1.0)

    def dist(p: Point) -> float:
        return math.sqrt(sum(((p.score(n) - ideal) / span) ** 2
                             for n, (ideal, span) in corner.items()))

    best = min(front, key=lambda p: (dist(p), p.number))
    return best, f"knee: closest of {len(front)} front point(s) to the ideal corner"
