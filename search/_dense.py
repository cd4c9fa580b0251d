"""The dense reference: the task committed as trained, measured like every trial.

Before selecting, the owner of a task measures the *dense plan* (every layer sparsity 0,
unstructured, fp32: ``LayerPlan()``) through the same ``TaskProblem.run`` and latency function
as the trials (for the TVM target: the tuned dense build). It is not an Optuna trial: it takes no
place in the trial budget and does not steer the sampler (its parameters are usually outside the
space). It is logged as a nested MLflow run ``dense-reference`` with the trials' metrics, stored in
the study's user attributes, and enters selection as the point numbered ``DENSE`` (-1).

Guard: when the recipe cares about latency at all (an objective, a latency policy or a latency
limit), a chosen trial whose measured latency is not below the dense reference's is replaced by
the dense plan, and the reason is logged, tagged on the task run and returned. The one exception:
the dense plan breaks a constraint the chosen trial meets (say ``max_bytes``); then the trial is
kept and a warning says it is slower than dense.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.recipe import LayerPlan, SearchConfig
from pipeline.tracking import Run
from search._objective import TaskProblem, TrialResult, failure_reason
from search._select import DENSE, Point
from search.objectives import ScoreContext, constraints, describe, scores, trial_metrics

log = logging.getLogger(__name__)

REFERENCE_RUN = "dense-reference"


@dataclass
class DenseReference:
    plans: dict[str, LayerPlan]
    point: Point | None  # None when its build or measurement failed
    run_id: str | None = None
    failure: str | None = None
    seconds: float = 0.0  # compile + tune + measure seconds
    cached: bool = False
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def latency_ms(self) -> float:
        return self.point.latency_ms if self.point else float("nan")


def dense_plans(layers: Iterable[str]) -> dict[str, LayerPlan]:
    """No pruning, fp32, for every layer: the trained task as is."""
    return {n: LayerPlan(sparsity=0.0, pattern="unstructured", bits=32) for n in layers}


def plan_params(plans: dict[str, LayerPlan]) -> dict[str, str]:
    """MLflow params of a plan, named like the trials' (``<layer>.<field>``)."""
    return {f"{n}.{k}": str(v) for n, p in plans.items() for k, v in p.model_dump().items()}


def point_of(number: int, res: TrialResult, cfg: SearchConfig,
             ctx: ScoreContext) -> tuple[Point, dict[str, float]]:
    """A finished candidate's point (every registered objective) and its constraint values."""
    values = scores(res, ctx)
    cons = constraints(values, cfg.constraints, ctx)
    return Point(number, values, all(c <= 0 for c in cons.values()),
                 sum(max(c, 0.0) for c in cons.values())), cons


def measure_dense(problem: TaskProblem, cfg: SearchConfig, run: Run) -> DenseReference:
    """Measure the dense plan like a trial and log it as the ``dense-reference`` run."""
    ctx = ScoreContext(problem.reference_accuracy)
    plans = dense_plans(problem.trained)
    child = run.child(REFERENCE_RUN, tags={**problem.run_tags, "taskpack.reference": "dense"})
    child.log_params(plan_params(plans))
    try:
        res = problem.run(plans)
    except Exception as exc:  # any error: the search goes on without it
        reason = failure_reason(exc)
        log.warning("task %d: the dense reference could not be measured (%s); selecting "
                    "without it", problem.ctx.task, reason)
        child.set_tags({"failure_reason": reason, "pareto": "false"})
        child.end("FAILED")
        return DenseReference(plans, None, child.run_id, reason)
    point, cons = point_of(DENSE, res, cfg, ctx)
    child.log_metrics({**trial_metrics(res, ctx), "trial_seconds": res.seconds})
    child.set_tags({"feasible": str(point.feasible).lower(),
                    "latency_cached": str(res.latency.cached).lower(),
                    **{f"label.{k}": v for k, v in res.labels.items()}})
    child.end("FINISHED")
    log.info("task %d: dense reference: %s", problem.ctx.task, describe(point.scores))
    return DenseReference(plans, point, child.run_id, None, res.latency.seconds,
                          res.latency.cached, res.labels)


def latency_matters(cfg: SearchConfig) -> bool:
    """Whether the recipe says anything about latency (then the dense guard applies)."""
    return ("latency" in cfg.objectives or cfg.selection.policy != "knee"
            or cfg.constraints.max_latency_ms is not None)


def guard(chosen: Point, reason: str, dense: Point | None,
          cfg: SearchConfig) -> tuple[Point, str, bool]:
    """(point to commit, why, whether the dense plan replaced the selected trial)."""
    if dense is None or chosen.dense or not latency_matters(cfg):
        return chosen, reason, False
    if chosen.latency_ms < dense.latency_ms:
        return chosen, reason, False
    if chosen.feasible and not dense.feasible:
        log.warning("%s is not faster than the dense reference (%.4f ms vs %.4f ms), but the "
                    "dense plan breaks the constraints it meets: keeping it", chosen.label,
                    chosen.latency_ms, dense.latency_ms)
        return chosen, (f"{reason}; not faster than the dense reference "
                        f"({chosen.latency_ms:.4f} vs {dense.latency_ms:.4f} ms), which breaks "
                        "the constraints"), False
    why = (f"{chosen.label} ({reason}) measured {chosen.latency_ms:.4f} ms, not faster than the "
           f"dense reference's {dense.latency_ms:.4f} ms: committed the dense plan")
    log.warning("fell back to the dense plan: %s", why)
    return dense, why, True


def speedup(dense: DenseReference | None, chosen: Point) -> float:
    """Dense latency over the chosen latency (1.0 when the dense plan is chosen)."""
    if dense is None or dense.point is None:
        return float("nan")
    if chosen.dense:
        return 1.0
    return dense.latency_ms / chosen.latency_ms if chosen.latency_ms > 0 else float("nan")


def dense_stats(dense: DenseReference | None, chosen: Point,
                fell_back: bool) -> dict[str, float]:
    return {"search_dense_latency_ms": dense.latency_ms if dense else float("nan"),
            "search_speedup_vs_dense": speedup(dense, chosen),
            "search_fell_back_to_dense": float(fell_back),
            "search_dense_measured": float(dense is not None and dense.point is not None)}
