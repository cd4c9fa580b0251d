"""The per-task search loop: ask -> apply plan -> score -> tell, within the budgets.

Budgets: ``search.trials`` finished trials (failed ones count, so a broken space cannot spin
forever), exact across the processes that share the study (``search._study``), and
``search.timeout_s`` of wall time, which includes the compile/tune/measure seconds (they are also
reported separately). Any error of a trial (a failed build or measurement, an out-of-memory or
other error in its fine-tuning) fails that trial with its reason (trial user attr
``failure_reason``, tag of its MLflow run) and the search goes on; only KeyboardInterrupt stops
it. Every trial gets a nested MLflow run under the task's run.

Scores, study directions, constraints and trial metrics come from the objective registry
(``search.objectives``). The owner of the task also measures the dense reference
(``search._dense``) outside the trial budget and never commits a trial slower than it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FixedTrial, TrialState

from pipeline.errors import PipelineError
from pipeline.progress import QUIET, Bars
from pipeline.recipe import LayerPlan, SearchConfig
from pipeline.tracking import Run
from search._dense import DenseReference, dense_stats, guard, measure_dense, plan_params, point_of
from search._objective import TaskProblem, failure_reason
from search._pareto import front_context, write_front
from search._select import DENSE, Point, pareto_front, select
from search._space import LayerSpace, suggest_plans
from search._storage import (
    StaleCallback,
    close_storage,
    fail_stale,
    heartbeat,
    open_storage,
)
from search._study import (
    claim,
    enqueue_first,
    finished,
    make_sampler,
    open_study,
    retry_stale,
)
from search.objectives import ScoreContext, registered, resolve, trial_metrics

log = logging.getLogger(__name__)
_POLL_S = 1.0  # how often a process waiting for other processes' trials looks again


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


def trial_run_name(task: int, number: int) -> str:
    """``task-K/trial-N``: unique across the tasks of a run in MLflow's flat run list."""
    return f"task-{task}/trial-{number}"


def _run_trial(study, trial, problem: TaskProblem, cfg: SearchConfig,
               space: dict[str, LayerSpace], run: Run, tally: _Tally) -> bool:
    """One ask-tell step; False when the trial failed."""
    plans = suggest_plans(trial, space)
    child = run.child(trial_run_name(problem.ctx.task, trial.number),
                      tags={**problem.run_tags, "taskpack.trial": str(trial.number)})
    trial.set_user_attr("mlflow_run_id", child.run_id)
    child.log_params(plan_params(plans))
    tally.ran += 1
    try:
        res = problem.run(plans)
    except Exception as exc:  # any error of this candidate; KeyboardInterrupt still stops
        reason = failure_reason(exc)
        log.info("trial %d failed: %s", trial.number, reason)
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


def _step(study, storage, problem: TaskProblem, cfg: SearchConfig,
          space: dict[str, LayerSpace], run: Run, tally: _Tally) -> bool | None:
    """Claim and run one trial: True/False as ``_run_trial``; None when no place in the budget
    was left for this process (the other processes run the remaining trials)."""
    trial = claim(study, storage, cfg.trials)
    if trial is None:
        return None
    with heartbeat(storage, trial):
        try:
            return _run_trial(study, trial, problem, cfg, space, run, tally)
        except UpdateFinishedTrialError:
            # its heartbeat was late (a process stalled past search.grace_s): another process
            # failed it as dead and asks its plan again; this result is dropped
            log.warning("trial %d was failed by another process while it ran (no heartbeat "
                        "within %d s); its result is dropped", trial.number, cfg.grace_s)
            return False


def search_task(problem: TaskProblem, cfg: SearchConfig, space: dict[str, LayerSpace],
                run: Run, journal: Path, study_name: str, artifacts: Path,
                bars: Bars = QUIET, worker: bool = False, warm: dict | None = None,
                on_ready: Callable[[], None] | None = None) -> SearchOutcome:
    """Search one task's plan. ``warm``: parameters of the study's first trial (the previous
    task's chosen plan); ``on_ready``: called once the study is open and seeded (the owner
    publishes the task to workers there, so their first trial cannot pre-empt the warm start)."""
    start = time.perf_counter()
    on_stale = retry_stale(run)
    storage = open_storage(cfg, journal, on_stale)
    try:
        study = open_study(study_name, storage,
                           # seeded per task: tasks do not all ask the same sequence of plans
                           make_sampler(cfg.sampler, cfg.seed + problem.ctx.task),
                           [o.name for o in resolve(cfg.objectives)], worker)
        if warm and not worker and enqueue_first(study, warm):
            log.info("task %d: first trial = the previous task's chosen plan", problem.ctx.task)
        if on_ready is not None:
            on_ready()
        tally = _Tally()
        dense: DenseReference | None = None
        if not worker:  # measured once per process, outside the trial budget (cached)
            dense = measure_dense(problem, cfg, run)
            tally.compile_s += dense.seconds
            tally.hits += int(dense.cached)
            if dense.point is not None:
                study.set_user_attr("dense_reference", {"scores": dict(dense.point.scores),
                                                        "feasible": dense.point.feasible})
        _trials(study, storage, on_stale, problem, cfg, space, run, tally, bars, start)
        if worker:  # workers only add trials; the run that owns the task selects and commits
            return SearchOutcome({}, -1, "worker", [], [], tally.ran, tally.failures,
                                 time.perf_counter() - start, tally.compile_s, tally.hits)
        _wait_for_running(study, storage, on_stale)
        return _select_and_record(study, problem, cfg, space, run, artifacts, dense, tally,
                                  start)
    finally:
        close_storage(storage)


def _trials(study, storage, on_stale: StaleCallback, problem: TaskProblem, cfg: SearchConfig,
            space: dict[str, LayerSpace], run: Run, tally: _Tally, bars: Bars,
            start: float) -> None:
    """Run trials until the study's budget is finished (by any process) or time is up."""
    objectives = [o.name for o in resolve(cfg.objectives)]
    with bars.bar(f"task {problem.ctx.task} search", cfg.trials) as bar:
        bars.advance(bar, finished(study))
        while True:
            # a trial whose process died: failed, and its plan asked again
            fail_stale(study, storage, on_stale)
            if finished(study) >= cfg.trials:
                return
            if cfg.timeout_s is not None and time.perf_counter() - start >= cfg.timeout_s:
                log.info("search budget of %.0f s spent after %d trials", cfg.timeout_s,
                         tally.ran)
                return
            ok = _step(study, storage, problem, cfg, space, run, tally)
            if ok is None:  # the rest of the budget is running elsewhere: wait for it
                time.sleep(_POLL_S)
            elif ok:
                front = pareto_front(_points(study), objectives)
                bars.advance(bar, info=f"failed {tally.failures}, front {len(front)}")
            else:
                bars.advance(bar, info=f"failed {tally.failures}")


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
                        front_context(problem, cfg, reason, len(trials)), objectives)
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
    # the committed plan on the task's run, named like the trials' params (compare in the UI)
    run.log_params({**plan_params(plans), "search.chosen_trial": str(chosen.number)})
    return SearchOutcome(plans, chosen.number, reason, points, front, tally.ran,
                         tally.failures, wall, tally.compile_s, tally.hits, stats)


def _wait_for_running(study, storage, on_stale: StaleCallback) -> None:
    """Let trials other processes still run finish before selecting (after a timeout; a budget
    reached leaves none running). Bounded by the trials' liveness, not by a fixed time: a trial
    whose process died is failed by ``fail_stale`` (heartbeats, or a gone pid on this machine)."""
    said = 0
    while True:
        fail_stale(study, storage, on_stale)
        running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if not running:
            return
        if running != said:
            log.info("waiting for %d trial(s) other workers are running", running)
            said = running
        time.sleep(_POLL_S)


def _points(study) -> list[Point]:
    """Finished trials as points carrying every stored objective value; the selection reads only
    the configured objectives (``select``/``pareto_front`` take their names)."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        cons = t.user_attrs.get("constraints", ())
        out.append(Point(t.number, dict(t.user_attrs.get("scores", {})),
                         all(c <= 0 for c in cons), sum(max(c, 0.0) for c in cons)))
    return out
