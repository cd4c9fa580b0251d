"""Optuna studies: samplers seeded per trial, resumable storage, constraints.

Each trial gets a fresh sampler seeded (through the constructor's ``seed=``) from
``(seed, trial number)``. A study resumed after a kill therefore asks for the same parameters an
uninterrupted one would, given the same finished trials (Optuna's own RNG state is not stored in
the journal). Only Optuna's public API is used: trials interrupted by a kill are failed with
``Study.tell`` and remembered in the study's user attributes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.objectives import directions

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted (process killed)"
INTERRUPTED_KEY = "interrupted_trials"  # study user attr: numbers of trials a kill interrupted
ENQUEUED_KEY = "enqueued_params"  # trial user attr: the parameters it was enqueued with
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
                if t.number < trial.number and _interrupted(t, skipped))
        self.inner = self.factory(self.trial_seed(trial.number - n))
        self.inner.before_trial(study, trial)

    def after_trial(self, study, trial, state, values) -> None:
        self.inner.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.inner.reseed_rng()


def open_storage(url: str | None, default_journal: Path) -> Any:
    """An RDB URL as given, else a journal file (created on first use)."""
    if url:
        return url
    from optuna.storages.journal import JournalFileBackend

    default_journal.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(default_journal)))


def open_study(name: str, storage, sampler, objectives: Sequence[str], worker: bool = False):
    """Create or load the study (directions from the objective registry); in single-process
    mode, trials left RUNNING by a kill are marked FAIL (they will not be repeated, and no
    finished trial is lost); an interrupted enqueued trial is enqueued again, so the resumed
    study asks what it would have."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                directions=directions(objectives), load_if_exists=True)
    if not worker:
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
            or trial.user_attrs.get("failure_reason") == INTERRUPTED)


def finished(study) -> int:
    """Trials that count toward the budget: complete or genuinely failed, not interrupted."""
    skipped = interrupted_numbers(study)
    return sum(1 for t in study.get_trials(deepcopy=False,
                                           states=(TrialState.COMPLETE, TrialState.FAIL))
               if not _interrupted(t, skipped))
