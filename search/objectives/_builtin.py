"""The built-in objectives: validation accuracy, compiled latency, bytes added to the store."""

from __future__ import annotations

from typing import TYPE_CHECKING

from search.objectives import Objective, ScoreContext, register_objective

if TYPE_CHECKING:
    from pipeline.recipe import SearchConstraints
    from search._objective import TrialResult


@register_objective
class AccuracyObjective(Objective):
    """Validation accuracy (%) through the task's compressed subnetwork."""

    name = "accuracy"
    direction = "maximize"
    metric = "val_accuracy"
    stat = "val_acc"
    fmt = ".2f"
    constraint_name = "acc_drop"

    def value(self, result: TrialResult, ctx: ScoreContext) -> float:
        return float(result.accuracy)

    def metrics(self, result: TrialResult, ctx: ScoreContext) -> dict[str, float]:
        acc = self.value(result, ctx)
        return {self.metric: acc, "acc_drop": ctx.reference_accuracy - acc}

    def constraint(self, value: float, limits: SearchConstraints,
                   ctx: ScoreContext) -> float | None:
        if limits.max_acc_drop is None:
            return None
        return ctx.reference_accuracy - value - limits.max_acc_drop


@register_objective
class LatencyObjective(Objective):
    """Median latency (ms) measured on the model compiled for the search target."""

    name = "latency"
    direction = "minimize"
    metric = "latency_median_ms"
    stat = "latency_ms"
    fmt = ".4f"
    constraint_name = "latency_ms"

    def value(self, result: TrialResult, ctx: ScoreContext) -> float:
        return float(result.latency.median_ms)

    def metrics(self, result: TrialResult, ctx: ScoreContext) -> dict[str, float]:
        return {self.metric: self.value(result, ctx),
                "latency_p90_ms": float(result.latency.p90_ms),
                "latency_threads": float(result.latency.threads)}

    def constraint(self, value: float, limits: SearchConstraints,
                   ctx: ScoreContext) -> float | None:
        return None if limits.max_latency_ms is None else value - limits.max_latency_ms


@register_objective
class BytesObjective(Objective):
    """Exact bytes the task would add to the packed store."""

    name = "bytes"
    direction = "minimize"
    metric = "store_bytes"
    stat = "bytes"
    fmt = ",.0f"
    constraint_name = "bytes"

    def value(self, result: TrialResult, ctx: ScoreContext) -> float:
        return float(result.nbytes)

    def constraint(self, value: float, limits: SearchConstraints,
                   ctx: ScoreContext) -> float | None:
        return None if limits.max_bytes is None else value - limits.max_bytes
