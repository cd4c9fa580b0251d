"""The per-task search loop: ask -> apply plan -> score -> tell, within the budgets.

Budgets: ``search.trials`` finished trials (failed ones count, so a broken space cannot spin
forever) and ``search.timeout_s`` of wall time, which includes the compile/tune/measure seconds
(they are also reported separately). A trial whose compile or measurement fails is told FAIL with
its reason and the search goes on. Every trial gets a nested MLflow run under the task's run.

Scores, study directions, constraints and trial metrics come from the objective registry
(``search.objectives``). The owner of the task also measures the dense reference
(``search._dense``) outside the trial budget and never commits a trial slower than it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from optuna.trial import FixedTrial, TrialState

from pipeline.errors import PipelineError, TaskpackError
from pipeline.progress import QUIET, Bars
from pipeline.recipe import LayerPlan, SearchConfig
from pipeline.tracking import Run
from search._dense import DenseReference, dense_stats, guard, measure_dense, plan_params, point_of
from search._objective import TaskProblem
from search._pareto import write_front
from search._select import DENSE, Point, pareto_front, select
from search._space import LayerSpace, suggest_plans
from search._study import enqueue_first, finished, make_sampler, open_storage, open_study
from search.objectives import ScoreContext, registered, resolve, trial_metrics

log = logging.getLogger(__name__)


@dataclass
class SearchOutcome:
    plans: dict[str, LayerPlan]
    trial: int  # the chosen trial's number; -1: the dense reference
    reason: str
    points: list[Point]
    front: list[Point]
    trials_run: int  # in this process
    failures: int
    wall_s: float
    compile_s: float
    cache_hits: int
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class _Tally:
    ran: int = 0
    failures: int = 0
    hits: int = 0
    workloads: int = 0
    workloads_tuned: int = 0
    compile_s: float = 0.0


def _run_trial(study, trial, problem: TaskProblem, cfg: SearchConfig,
               space: dict[str, LayerSpace], run: Run, tally: _Tally) -> bool:
    """One ask-tell step; False when the trial failed."""
    plans = suggest_plans(trial, space)
    child = run.child(f"trial-{trial.number}", tags={"taskpack.trial": str(trial.number)})
    trial.set_user_attr("mlflow_run_id", child.run_id)
    trial.set_user_attr("pid", os.getpid())  # which worker ran it
    child.log_params(plan_params(plans))
    tally.ran += 1
    try:
        res = problem.run(plans)
    except (TaskpackError, PipelineError, RuntimeError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {exc}"[:500]
        trial.set_user_attr("failure_reason", reason)
        study.tell(trial, state=TrialState.FAIL)
        child.set_tags({"failure_reason": reason, "pareto": "false"})
        child.end("FAILED")
        tally.failures += 1
        return False
    tally.compile_s += res.latency.seconds
    tally.hits += int(res.latency.cached)
    if not res.latency.cached:
        tally.workloads += res.latency.workloads
        tally.workloads_tuned += res.latency.workloads_tuned
    ctx = ScoreContext(problem.reference_accuracy)
    point, cons = point_of(trial.number, res, cfg, ctx)
    trial.set_user_attr("constraints", list(cons.values()))
    for name, value in cons.items():
        trial.set_constraint(name, value)
    trial.set_user_attr("scores", dict(point.scores))
    trial.set_user_attr("latency_p90_ms", res.latency.p90_ms)
    trial.set_user_attr("labels", res.labels)
    study.tell(trial, [point.score(o) for o in cfg.objectives])
    child.log_metrics({**trial_metrics(res, ctx), "trial_seconds": res.seconds})
    child.set_tags({"feasible": str(point.feasible).lower(),
                    "latency_cached": str(res.latency.cached).lower(),
                    **{f"label.{k}": v for k, v in res.labels.items()}})
    child.end("FINISHED")
    return True


def search_task(problem: TaskProblem, cfg: SearchConfig, space: dict[str, LayerSpace],
                run: Run, journal: Path, study_name: str, artifacts: Path,
                bars: Bars = QUIET, worker: bool = False, warm: dict | None = None,
                on_ready: Callable[[], None] | None = None) -> SearchOutcome:
    """Search one task's plan. ``warm``: parameters of the study's first trial (the previous
    task's chosen plan); ``on_ready``: called once the study is open and seeded (the owner
    publishes the task to workers there, so their first trial cannot pre-empt the warm start)."""
    start = time.perf_counter()
    objectives = [o.name for o in resolve(cfg.objectives)]
    study = open_study(study_name, open_storage(cfg.storage, journal),
                       # seeded per task: tasks do not all ask the same sequence of plans
                       make_sampler(cfg.sampler, cfg.seed + problem.ctx.task),
                       objectives, worker)
    if warm and not worker and enqueue_first(study, warm):
        log.info("task %d: first trial = the previous task's chosen plan", problem.ctx.task)
    if on_ready is not None:
        on_ready()
    tally = _Tally()
    dense: DenseReference | None = None
    if not worker:  # measured once per process, outside the trial budget (cached by structure)
        dense = measure_dense(problem, cfg, run)
        tally.compile_s += dense.seconds
        tally.hits += int(dense.cached)
        if dense.point is not None:
            study.set_user_attr("dense_reference", {"scores": dict(dense.point.scores),
                                                    "feasible": dense.point.feasible})
    with bars.bar(f"task {problem.ctx.task} search", cfg.trials) as bar:
        bars.advance(bar, finished(study))
        while finished(study) < cfg.trials:
            if cfg.timeout_s is not None and time.perf_counter() - start >= cfg.timeout_s:
                log.info("search budget of %.0f s spent after %d trials", cfg.timeout_s,
                         tally.ran)
                break
            if _run_trial(study, study.ask(), problem, cfg, space, run, tally):
                front = pareto_front(_points(study), objectives)
                bars.advance(bar, info=f"failed {tally.failures}, front {len(front)}")
            else:
                bars.advance(bar, info=f"failed {tally.failures}")
    if worker:  # workers only add trials; the run that owns the task selects and commits
        return SearchOutcome({}, -1, "worker", [], [], tally.ran, tally.failures,
                             time.perf_counter() - start, tally.compile_s, tally.hits)
    _wait_for_running(study)
    return _select_and_record(study, problem, cfg, space, run, artifacts, dense, tally, start)


def _select_and_record(study, problem: TaskProblem, cfg: SearchConfig,
                       space: dict[str, LayerSpace], run: Run, artifacts: Path,
                       dense: DenseReference | None, tally: _Tally,
                       start: float) -> SearchOutcome:
    objectives = list(cfg.objectives)
    trials = _points(study)
    points = trials + ([dense.point] if dense is not None and dense.point is not None else [])
    if not points:
        raise PipelineError(f"task {problem.ctx.task}: all {finished(study)} search trials "
                            "and the dense reference failed; see the failure_reason tags of the "
                            "trial runs")
    if not trials:
        log.warning("task %d: all %d search trials failed; choosing among the dense reference "
                    "only", problem.ctx.task, finished(study))
    chosen, reason = select(points, cfg.selection.policy, cfg.selection.value,
                            problem.reference_accuracy, objectives)
    chosen, reason, fell_back = guard(chosen, reason, dense.point if dense else None, cfg)
    front = pareto_front([p for p in points if p.feasible], objectives) or [chosen]
    on_front = {p.number for p in front}
    params = {t.number: t.params for t in study.get_trials(deepcopy=False)}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id:
            run.reopen(run_id).set_tags({"pareto": str(t.number in on_front).lower(),
                                         "chosen": str(t.number == chosen.number).lower()})
    if dense is not None and dense.run_id is not None and dense.point is not None:
        run.reopen(dense.run_id).set_tags({"pareto": str(DENSE in on_front).lower(),
                                           "chosen": str(chosen.dense).lower()})
    files = write_front(points, chosen, params, artifacts,
                        f"task {problem.ctx.task}: {len(trials)} trials + dense reference, "
                        f"{len(front)} on front", objectives)
    for f in files:
        run.log_artifact(f, "pareto")
    run.set_tags({"search.chosen_trial": str(chosen.number), "search.reason": reason,
                  "search.fell_back_to_dense": str(fell_back).lower(),
                  "search.dense_reference": "measured" if dense and dense.point else
                  f"failed: {dense.failure}" if dense else "not measured"})
    log.info("task %d: chose %s: %s", problem.ctx.task, chosen.label, reason)
    wall = time.perf_counter() - start
    stats = {"search_trials": float(finished(study)), "search_failures": float(tally.failures),
             "search_front_size": float(len(front)), "search_wall_s": wall,
             "search_compile_s": tally.compile_s, "search_cache_hits": float(tally.hits),
             # tuning database: workloads of fresh builds, and how many had to be tuned
             "search_tuning_workloads": float(tally.workloads),
             "search_tuning_tuned": float(tally.workloads_tuned),
             "search_chosen_trial": float(chosen.number),
             **{f"search_chosen_{o.stat}": chosen.score(name)
                for name, o in registered().items()},
             "search_reference_val_acc": problem.reference_accuracy,
             **dense_stats(dense, chosen, fell_back)}
    chosen_params = {} if chosen.dense else params.get(chosen.number, {})
    (artifacts / "chosen.json").write_text(json.dumps(
        {"trial": chosen.number, "dense": chosen.dense, "reason": reason,
         "params": chosen_params}, indent=2))
    run.log_artifact(artifacts / "chosen.json", "pareto")
    # the chosen trial's plan, or the dense plan (the warm start of the next task then has none)
    plans = dense.plans if chosen.dense and dense is not None else suggest_plans(
        FixedTrial(chosen_params), space)
    return SearchOutcome(plans, chosen.number, reason, points, front, tally.ran,
                         tally.failures, wall, tally.compile_s, tally.hits, stats)


def _wait_for_running(study, timeout_s: float = 900.0) -> None:
    """Let trials other workers are still running finish before selecting (bounded wait)."""
    deadline = time.monotonic() + timeout_s
    while study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if time.monotonic() > deadline:
            log.warning("selecting while trials of other workers are still running")
            return
        time.sleep(1.0)


def _points(study) -> list[Point]:
    """Finished trials as points carrying every stored objective value; the selection reads only
    the configured objectives (``select``/``pareto_front`` take their names)."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        cons = t.user_attrs.get("constraints", ())
        out.append(Point(t.number, dict(t.user_attrs.get("scores", {})),
                         all(c <= 0 for c in cons), sum(max(c, 0.0) for c in cons)))
    return out
