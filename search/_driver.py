"""The per-task search loop: ask -> apply plan -> score -> tell, within the budgets.

Budgets: ``search.trials`` finished trials (failed ones count, so a broken space cannot spin
forever) and ``search.timeout_s`` of wall time, which includes the compile/tune/measure seconds
(they are also reported separately). A trial whose compile or measurement fails is told FAIL with
its reason and the search goes on. Every trial gets a nested MLflow run under the task's run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import PipelineError, TaskpackError
from pipeline.progress import QUIET, Bars
from pipeline.recipe import LayerPlan
from pipeline.recipe._schema import SearchConfig
from pipeline.tracking import Run
from search._objective import TaskProblem, TrialResult
from search._pareto import write_front
from search._select import Point, pareto_front, select
from search._space import LayerSpace, suggest_plans
from search._study import enqueue_first, finished, make_sampler, open_storage, open_study

log = logging.getLogger(__name__)


@dataclass
class SearchOutcome:
    plans: dict[str, LayerPlan]
    trial: int
    reason: str
    points: list[Point]
    front: list[Point]
    trials_run: int  # in this process
    failures: int
    wall_s: float
    compile_s: float
    cache_hits: int
    stats: dict[str, float] = field(default_factory=dict)


def _constraints(cfg: SearchConfig, res: TrialResult, reference: float) -> dict[str, float]:
    """Constraint values by name; <= 0 means satisfied (Optuna's convention)."""
    c = cfg.constraints
    out = {}
    if c.max_acc_drop is not None:
        out["acc_drop"] = reference - res.accuracy - c.max_acc_drop
    if c.max_latency_ms is not None:
        out["latency_ms"] = res.latency.median_ms - c.max_latency_ms
    if c.max_bytes is not None:
        out["bytes"] = float(res.nbytes - c.max_bytes)
    return out


def search_task(problem: TaskProblem, cfg: SearchConfig, space: dict[str, LayerSpace],
                run: Run, journal: Path, study_name: str, artifacts: Path,
                bars: Bars = QUIET, worker: bool = False, warm: dict | None = None,
                on_ready: Callable[[], None] | None = None) -> SearchOutcome:
    """Search one task's plan. ``warm``: parameters of the study's first trial (the previous
    task's chosen plan); ``on_ready``: called once the study is open and seeded (the owner
    publishes the task to workers there, so their first trial cannot pre-empt the warm start)."""
    from optuna.trial import TrialState

    start = time.perf_counter()
    study = open_study(study_name, open_storage(cfg.storage, journal),
                       # seeded per task: tasks do not all ask the same sequence of plans
                       make_sampler(cfg.sampler, cfg.seed + problem.ctx.task),
                       list(cfg.objectives), worker)
    if warm and not worker and enqueue_first(study, warm):
        log.info("task %d: first trial = the previous task's chosen plan", problem.ctx.task)
    if on_ready is not None:
        on_ready()
    done0 = finished(study)
    ran = failures = hits = workloads = workloads_tuned = 0
    compile_s = 0.0
    with bars.bar(f"task {problem.ctx.task} search", cfg.trials) as bar:
        bars.advance(bar, done0)
        while finished(study) < cfg.trials:
            if cfg.timeout_s is not None and time.perf_counter() - start >= cfg.timeout_s:
                log.info("search budget of %.0f s spent after %d trials", cfg.timeout_s, ran)
                break
            trial = study.ask()
            plans = suggest_plans(trial, space)
            child = run.child(f"trial-{trial.number}", tags={"taskpack.trial": str(trial.number)})
            trial.set_user_attr("mlflow_run_id", child.run_id)
            trial.set_user_attr("pid", os.getpid())  # which worker ran it
            child.log_params({f"{n}.{k}": str(v) for n, p in plans.items()
                              for k, v in p.model_dump().items()})
            ran += 1
            try:
                res = problem.run(plans)
            except (TaskpackError, PipelineError, RuntimeError, ValueError) as exc:
                reason = f"{type(exc).__name__}: {exc}"[:500]
                trial.set_user_attr("failure_reason", reason)
                study.tell(trial, state=TrialState.FAIL)
                child.set_tags({"failure_reason": reason, "pareto": "false"})
                child.end("FAILED")
                failures += 1
                bars.advance(bar, info=f"failed {failures}")
                continue
            compile_s += res.latency.seconds
            hits += int(res.latency.cached)
            if not res.latency.cached:
                workloads += res.latency.workloads
                workloads_tuned += res.latency.workloads_tuned
            values = {"accuracy": res.accuracy, "latency": res.latency.median_ms,
                      "bytes": float(res.nbytes)}
            cons = _constraints(cfg, res, problem.reference_accuracy)
            trial.set_user_attr("constraints", list(cons.values()))
            for name, value in cons.items():
                trial.set_constraint(name, value)
            trial.set_user_attr("scores", values)
            trial.set_user_attr("latency_p90_ms", res.latency.p90_ms)
            trial.set_user_attr("labels", res.labels)
            study.tell(trial, [values[o] for o in cfg.objectives])
            child.log_metrics({"val_accuracy": res.accuracy,
                               "acc_drop": problem.reference_accuracy - res.accuracy,
                               "latency_median_ms": res.latency.median_ms,
                               "latency_p90_ms": res.latency.p90_ms,
                               "store_bytes": float(res.nbytes), "trial_seconds": res.seconds})
            child.set_tags({"feasible": str(all(c <= 0 for c in cons.values())).lower(),
                            "latency_cached": str(res.latency.cached).lower(),
                            **{f"label.{k}": v for k, v in res.labels.items()}})
            child.end("FINISHED")
            points = _points(study, list(cfg.objectives))
            bars.advance(bar, info=f"failed {failures}, front {len(pareto_front(points))}")
    if worker:  # workers only add trials; the run that owns the task selects and commits
        return SearchOutcome({}, -1, "worker", [], [], ran, failures,
                             time.perf_counter() - start, compile_s, hits)
    _wait_for_running(study)
    points = _points(study, list(cfg.objectives))
    if not points:
        raise PipelineError(f"task {problem.ctx.task}: all {finished(study)} search trials "
                            "failed; see the failure_reason tags of the trial runs")
    chosen, reason = select(points, cfg.selection.policy, cfg.selection.value,
                            problem.reference_accuracy)
    front = pareto_front([p for p in points if p.feasible]) or [chosen]
    params = {t.number: t.params for t in study.get_trials(deepcopy=False)}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id:
            run.reopen(run_id).set_tags({"pareto": str(any(p.number == t.number
                                                          for p in front)).lower(),
                                         "chosen": str(t.number == chosen.number).lower()})
    files = write_front(points, chosen, params, artifacts,
                        f"task {problem.ctx.task}: {len(points)} trials, {len(front)} on front")
    for f in files:
        run.log_artifact(f, "pareto")
    run.set_tags({"search.chosen_trial": str(chosen.number), "search.reason": reason})
    wall = time.perf_counter() - start
    stats = {"search_trials": float(finished(study)), "search_failures": float(failures),
             "search_front_size": float(len(front)), "search_wall_s": wall,
             "search_compile_s": compile_s, "search_cache_hits": float(hits),
             # tuning database: workloads of fresh builds, and how many had to be tuned
             "search_tuning_workloads": float(workloads),
             "search_tuning_tuned": float(workloads_tuned),
             "search_chosen_trial": float(chosen.number),
             "search_chosen_val_acc": chosen.accuracy,
             "search_chosen_latency_ms": _score(study, chosen.number, "latency"),
             "search_chosen_bytes": _score(study, chosen.number, "bytes"),
             "search_reference_val_acc": problem.reference_accuracy}
    (artifacts / "chosen.json").write_text(json.dumps(
        {"trial": chosen.number, "reason": reason, "params": params.get(chosen.number, {})},
        indent=2))
    run.log_artifact(artifacts / "chosen.json", "pareto")
    from optuna.trial import FixedTrial

    plans = suggest_plans(FixedTrial(params[chosen.number]), space)  # the chosen trial's plan
    return SearchOutcome(plans, chosen.number,
                         reason, points, front, ran, failures, wall, compile_s, hits, stats)


def _wait_for_running(study, timeout_s: float = 900.0) -> None:
    """Let trials other workers are still running finish before selecting (bounded wait)."""
    from optuna.trial import TrialState

    deadline = time.monotonic() + timeout_s
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if time.monotonic() > deadline:
            log.warning("selecting while trials of other workers are still running")
            return
        time.sleep(1.0)


def _score(study, number: int, name: str) -> float:
    return float(study.trials[number].user_attrs.get("scores", {}).get(name, math.nan))


def _points(study, objectives: list[str]) -> list[Point]:
    """Finished trials as points; a score that is not an objective is left out (0), so the
    selection depends on the configured objectives only."""
    from optuna.trial import TrialState

    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        s = {k: v for k, v in t.user_attrs.get("scores", {}).items() if k in objectives}
        cons = t.user_attrs.get("constraints", ())
        out.append(Point(t.number, s.get("accuracy", 0.0), s.get("latency", 0.0),
                         s.get("bytes", 0.0), all(c <= 0 for c in cons),
                         sum(max(c, 0.0) for c in cons)))
    return out
