"""Optuna studies: samplers seeded per trial, resumable storage, constraints.

Each trial gets a fresh sampler seeded (through the constructor's ``seed=``) from
``(seed, trial number)``. A study resumed after a kill therefore asks for the same parameters an
uninterrupted one would, given the same finished trials (Optuna's own RNG state is not stored in
the journal). Only Optuna's public API is used: trials interrupted by a kill are failed with
``Study.tell`` and remembered in the study's user attributes.

Several processes (the run that owns the task and ``taskpack search --worker``s) share one study
and one budget of ``search.trials`` finished trials. A trial counts once it is COMPLETE or FAIL by
its own error (its ``failure_reason``); a trial failed because its process died (heartbeat stale,
or found running at a resume) does not count, and is asked again (``retry_stale``). The budget is
exact across processes: a process asks only while finished + running trials are below it, and a
trial whose place (counted trials numbered before it, running and waiting ones included) is past
the budget, because another process asked at the same moment, is told PRUNED without running.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from pipeline.recipe import Recipe, SearchConfig
from pipeline.tracking import Run
from search._storage import StaleCallback, ask, beat_once, has_heartbeat
from search.objectives import directions

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted (process killed)"
INTERRUPTED_KEY = "interrupted_trials"  # study user attr: numbers of trials a kill interrupted
ENQUEUED_KEY = "enqueued_params"  # trial user attr: the parameters it was enqueued with
RETRY_OF = "retry_of"  # trial user attr: the number of the stale trial it asks again
MAX_RETRIES = 3  # a plan whose process died this often is given up (it does not count)
SAMPLERS: dict[str, Callable[[int], optuna.samplers.BaseSampler]] = {
    # constraints come from Trial.set_constraint (Optuna 5); values <= 0 are satisfied
    "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed, population_size=8),
    "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=6,
                                                   multivariate=True),
    "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
}


def make_sampler(kind: str, seed: int) -> optuna.samplers.BaseSampler:
    if kind not in SAMPLERS:
        raise ValueError(f"search.sampler must be one of {sorted(SAMPLERS)}, got {kind!r}")
    return PerTrialSeeded(SAMPLERS[kind], seed)


class PerTrialSeeded(optuna.samplers.BaseSampler):
    """Delegates to a sampler built by ``factory(seed)``, built afresh for each trial with a
    seed derived from the base seed and the trial's number (no private RNG is touched)."""

    def __init__(self, factory: Callable[[int], optuna.samplers.BaseSampler],
                 seed: int) -> None:
        self.factory, self.seed = factory, seed
        self.inner = factory(seed)

    def trial_seed(self, number: int) -> int:
        return (self.seed * 1_000_003 + number) % (2**32)

    def infer_relative_search_space(self, study, trial):
        return self.inner.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self.inner.sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self.inner.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial) -> None:
        # a trial re-asked after an interrupted one takes its seed: the resumed study then
        # asks exactly what the uninterrupted one did
        skipped = interrupted_numbers(study)
        n = sum(1 for t in study.get_trials(deepcopy=False)
                if t.number < trial.number and (_interrupted(t, skipped)
                                                or t.state == TrialState.PRUNED))
        self.inner = self.factory(self.trial_seed(trial.number - n))
        self.inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def open_study(name: str, storage, sampler, objectives: Sequence[str], worker: bool = False):
    """Create or load the study (directions from the objective registry); in single-process
    mode, trials left RUNNING by a kill are marked FAIL (they will not be repeated, and no
    finished trial is lost); an interrupted enqueued trial is enqueued again, so the resumed
    study asks what it would have."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                directions=directions(objectives), load_if_exists=True)
    # RDB: other processes may be running trials; the search loop fails only dead ones
    if not worker and not has_heartbeat(storage):
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if running:
            study.set_user_attr(INTERRUPTED_KEY, sorted(
                {*interrupted_numbers(study), *(t.number for t in running)}))
        for t in running:
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            log.info("trial %d was interrupted; marked FAIL", t.number)
            if ENQUEUED_KEY in t.user_attrs:  # an enqueued trial (warm start): ask it again
                study.enqueue_trial(t.user_attrs[ENQUEUED_KEY], user_attrs={
                    k: v for k, v in t.user_attrs.items() if k in ("warm_start", ENQUEUED_KEY)})
    return study


def enqueue_first(study, params: dict[str, Any]) -> bool:
    """Make ``params`` the study's first trial; only into a study with no trials yet, so a resumed
    study (or one other workers already started) asks exactly what it asked before."""
    if study.get_trials(deepcopy=False):
        return False
    study.enqueue_trial(params, user_attrs={"warm_start": True, ENQUEUED_KEY: params})
    return True


def interrupted_numbers(study) -> set[int]:
    return set(study.user_attrs.get(INTERRUPTED_KEY, ()))


def _interrupted(trial: FrozenTrial, numbers: set[int]) -> bool:
    return (trial.number in numbers
            # journals written before the study attribute: the trial's own mark
            or trial.user_attrs.get("failure_reason") == INTERRUPTED
            # failed by another process (its own died): a trial's own failure has a reason
            or (trial.state == TrialState.FAIL and "failure_reason" not in trial.user_attrs))


def _counted(trial: FrozenTrial, skipped: set[int], *states: TrialState) -> bool:
    """Whether ``trial`` takes a place in the budget: finished (complete, or failed by its own
    error), or in one of ``states``."""
    if trial.state in states:
        return True
    return (trial.state in (TrialState.COMPLETE, TrialState.FAIL)
            and not _interrupted(trial, skipped))


def finished(study) -> int:
    """Trials that count toward the budget: complete or genuinely failed, not interrupted."""
    skipped = interrupted_numbers(study)
    return sum(_counted(t, skipped) for t in study.get_trials(deepcopy=False))


def finished_trials(cfg: SearchConfig, journal: Path, name: str) -> int:
    """Finished trials (as ``finished``) of study ``name`` in ``cfg.storage`` or the journal
    file; 0 when it does not exist yet."""
    from search._storage import close_storage, open_storage

    if not cfg.storage and not journal.exists():
        return 0
    storage = open_storage(cfg, journal)
    try:
        return finished(optuna.load_study(study_name=name, storage=storage))
    except KeyError:  # no such study
        return 0
    finally:
        close_storage(storage)


def claimed(study) -> int:
    """Finished trials plus those running now (in any process)."""
    skipped = interrupted_numbers(study)
    return sum(_counted(t, skipped, TrialState.RUNNING)
               for t in study.get_trials(deepcopy=False))


def place(study, number: int) -> int:
    """How many trials numbered before ``number`` take a place in the budget: finished, running,
    or waiting to be asked (a waiting trial is asked before any new one)."""
    skipped = interrupted_numbers(study)
    return sum(_counted(t, skipped, TrialState.RUNNING, TrialState.WAITING)
               for t in study.get_trials(deepcopy=False) if t.number < number)


def claim(study, storage, budget: int) -> optuna.Trial | None:
    """A new (or waiting) trial with a place in the budget, or None when every place is taken
    (finished or running in some process). Exact across processes: a trial asked at the same
    moment as another's, whose place turns out past the budget, is told PRUNED unrun."""
    if claimed(study) >= budget:
        return None
    trial = ask(study)
    # first, so that a process killed from here on is found dead: its heartbeat (RDB), its
    # process id (a journal, whose processes share this machine)
    beat_once(storage, trial)
    trial.set_user_attr("pid", os.getpid())
    if place(study, trial.number) >= budget:
        study.tell(trial, state=TrialState.PRUNED)
        return None
    return trial


def retry_stale(run: Run) -> StaleCallback:
    """The stale-trial callback: a trial whose process died (no heartbeat for the grace period,
    or, with a journal, its process gone) is asked again with the same parameters, up to
    ``MAX_RETRIES`` times; its MLflow run (under ``run``) ends FAILED with the reason."""

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        reason = "worker lost: its process died while the trial ran"
        run_id = trial.user_attrs.get("mlflow_run_id")
        if run_id:
            child = run.reopen(run_id)
            child.set_tags({"failure_reason": reason, "pareto": "false"})
            child.end("FAILED")
        if "failure_reason" in trial.user_attrs:  # it had failed by itself before it died
            return
        retries = trial.user_attrs.get("retries", 0)
        if retries >= MAX_RETRIES:
            log.warning("trial %d: %s (%d times); not asked again", trial.number, reason,
                        retries + 1)
            return
        keep = {k: v for k, v in trial.user_attrs.items() if k in ("warm_start", ENQUEUED_KEY)}
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs={**keep, RETRY_OF: trial.number, "retries": retries + 1}))
        log.warning("trial %d: %s; failed, and its plan is asked again", trial.number, reason)

    return callback


# recipe fields that cannot change what a trial does or scores (names, places, budgets, storage)
_NEUTRAL = {"name", "description", "output_dir", "tuning_cache", "tracking", "evaluation"}
_NEUTRAL_SEARCH = {"trials", "timeout_s", "storage", "heartbeat_s", "grace_s"}


def study_name(recipe: Recipe, task: int) -> str:
    """``<name>-task-<t>-<hash>``: the hash covers every recipe field that shapes the search
    (data, model, method, training, space, objectives, targets...), so a changed recipe starts a
    new study instead of selecting among trials of the old one."""
    fields = {k: v for k, v in recipe.model_dump(mode="json").items() if k not in _NEUTRAL}
    fields["search"] = {k: v for k, v in fields["search"].items() if k not in _NEUTRAL_SEARCH}
    fields["store"] = {k: v for k, v in fields["store"].items() if k != "path"}
    digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]
    return f"{recipe.name}-task-{task}-{digest}"


def studies_of(recipe: Recipe) -> str:
    """A pattern matching every study of the recipe's name, whatever its hash (``--fresh``)."""
    return rf"{re.escape(recipe.name)}-task-\d+(-[0-9a-f]{{10}})?"
