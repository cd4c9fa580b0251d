"""Selection policies: which feasible Pareto point a task commits, and why (said in words)."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Point:
    """One finished trial's scores."""

    number: int
    accuracy: float  # validation, %
    latency_ms: float
    nbytes: float
    feasible: bool = True
    violation: float = 0.0  # sum of positive constraint values (0 when feasible)


def pareto_front(points: list[Point]) -> list[Point]:
    """Points no other point beats on all of (accuracy up, latency down, bytes down)."""
    def dominates(a: Point, b: Point) -> bool:
        no_worse = (a.accuracy >= b.accuracy and a.latency_ms <= b.latency_ms
                    and a.nbytes <= b.nbytes)
        better = (a.accuracy > b.accuracy or a.latency_ms < b.latency_ms
                  or a.nbytes < b.nbytes)
        return no_worse and better

    return [p for p in points if not any(dominates(q, p) for q in points if q is not p)]


def select(points: list[Point], policy: str, value: float | None,
           reference_accuracy: float) -> tuple[Point, str]:
    """The chosen point and a sentence saying why.

    Infeasible points are chosen only when no point is feasible: then the one that breaks the
    constraints least, so a run never loses a trained task to a too-strict constraint.
    """
    if not points:
        raise ValueError("no finished trial to select from")
    feasible = [p for p in points if p.feasible]
    if not feasible:
        best = min(points, key=lambda p: (p.violation, -p.accuracy, p.number))
        return best, (f"no trial met the constraints: took trial {best.number}, the least "
                      f"violating (violation {best.violation:.3g})")
    front = pareto_front(feasible)
    if policy == "min_latency_within_acc_drop":
        assert value is not None
        ok = [p for p in front if reference_accuracy - p.accuracy <= value]
        if ok:
            best = min(ok, key=lambda p: (p.latency_ms, p.nbytes, -p.accuracy, p.number))
            return best, (f"fastest of {len(ok)} front point(s) within {value} points of the "
                          f"uncompressed accuracy {reference_accuracy:.2f}")
        best = max(front, key=lambda p: (p.accuracy, -p.latency_ms, p.number))
        return best, (f"no front point within {value} points of {reference_accuracy:.2f}: "
                      "took the most accurate")
    if policy == "max_accuracy_under_latency_ms":
        assert value is not None
        ok = [p for p in front if p.latency_ms <= value]
        if ok:
            best = max(ok, key=lambda p: (p.accuracy, -p.latency_ms, -p.nbytes, -p.number))
            return best, f"most accurate of {len(ok)} front point(s) under {value} ms"
        best = min(front, key=lambda p: (p.latency_ms, p.number))
        return best, f"no front point under {value} ms: took the fastest"
    return _knee(front)


def _knee(front: list[Point]) -> tuple[Point, str]:
    """The front point closest to the ideal corner after min-max normalising each objective."""
    def span(vals: list[float]) -> tuple[float, float]:
        lo, hi = min(vals), max(vals)
        return lo, (hi - lo) or 1.0

    a_lo, a_sp = span([p.accuracy for p in front])
    l_lo, l_sp = span([p.latency_ms for p in front])
    b_lo, b_sp = span([p.nbytes for p in front])

    def dist(p: Point) -> float:
        return math.sqrt(((a_lo + a_sp - p.accuracy) / a_sp) ** 2
                         + ((p.latency_ms - l_lo) / l_sp) ** 2 + ((p.nbytes - b_lo) / b_sp) ** 2)

    best = min(front, key=lambda p: (dist(p), p.number))
    return best, f"knee: closest of {len(front)} front point(s) to the ideal corner"
