"""Optuna studies: samplers seeded per trial, resumable storage, constraints.

Each trial reseeds the sampler's random state from ``(seed, trial number)``. A study resumed after
a kill therefore asks for the same parameters an uninterrupted one would, given the same finished
trials (Optuna's own RNG state is not stored in the journal).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DIRECTIONS = {"accuracy": "maximize", "latency": "minimize", "bytes": "minimize"}
INTERRUPTED = "interrupted (process killed)"


def make_sampler(kind: str, seed: int):
    import optuna

    if kind == "nsga2":
        # constraints come from Trial.set_constraint (Optuna 5); values <= 0 are satisfied
        inner = optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    elif kind == "tpe":
        inner = optuna.samplers.TPESampler(seed=seed, n_startup_trials=6, multivariate=True)
    else:
        inner = optuna.samplers.RandomSampler(seed=seed)
    return _per_trial_seeded(inner, seed)


def _per_trial_seeded(inner, seed: int):
    import optuna

    class PerTrialSeeded(optuna.samplers.BaseSampler):
        """Delegates to ``inner``; reseeds its random states before each trial."""

        def __init__(self) -> None:
            self.inner = inner

        def _reseed(self, number: int) -> None:
            state = (seed * 1_000_003 + number) % (2**32)
            for obj in (self.inner, getattr(self.inner, "_random_sampler", None)):
                rng = getattr(obj, "_rng", None)
                if rng is not None:  # optuna's LazyRandomState
                    rng.rng.seed(state)

        def infer_relative_search_space(self, study, trial):
            return self.inner.infer_relative_search_space(study, trial)

        def sample_relative(self, study, trial, search_space):
            return self.inner.sample_relative(study, trial, search_space)

        def sample_independent(self, study, trial, param_name, param_distribution):
            return self.inner.sample_independent(study, trial, param_name, param_distribution)

        def before_trial(self, study, trial) -> None:
            # a trial re-asked after an interrupted one takes its seed: the resumed study then
            # asks exactly what the uninterrupted one did
            skipped = sum(1 for t in study.get_trials(deepcopy=False)
                          if t.number < trial.number and _interrupted(t))
            self._reseed(trial.number - skipped)
            self.inner.before_trial(study, trial)

        def after_trial(self, study, trial, state, values) -> None:
            self.inner.after_trial(study, trial, state, values)

        def reseed_rng(self) -> None:
            self.inner.reseed_rng()

    return PerTrialSeeded()


def open_storage(url: str | None, default_journal: Path) -> Any:
    """An RDB URL as given, else a journal file (created on first use)."""
    import optuna

    if url:
        return url
    from optuna.storages.journal import JournalFileBackend

    default_journal.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(default_journal)))


def open_study(name: str, storage, sampler, objectives: list[str], worker: bool = False):
    """Create or load the study; in single-process mode, trials left RUNNING by a kill are
    marked FAIL (they will not be repeated, and no finished trial is lost); an interrupted
    enqueued trial is enqueued again, so the resumed study asks what it would have."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                directions=[DIRECTIONS[o] for o in objectives],
                                load_if_exists=True)
    if not worker:
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            study._storage.set_trial_user_attr(t._trial_id, "failure_reason", INTERRUPTED)
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            log.info("trial %d was interrupted; marked FAIL", t.number)
            if "fixed_params" in t.system_attrs:  # an enqueued trial (warm start): ask it again
                study.enqueue_trial(t.system_attrs["fixed_params"], user_attrs={
                    k: v for k, v in t.user_attrs.items() if k == "warm_start"})
    return study


def enqueue_first(study, params: dict[str, Any]) -> bool:
    """Make ``params`` the study's first trial; only into a study with no trials yet, so a resumed
    study (or one other workers already started) asks exactly what it asked before."""
    if study.get_trials(deepcopy=False):
        return False
    study.enqueue_trial(params, user_attrs={"warm_start": True})
    return True


def _interrupted(trial) -> bool:
    return trial.user_attrs.get("failure_reason") == INTERRUPTED


def finished(study) -> int:
    """Trials that count toward the budget: complete or genuinely failed, not interrupted."""
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False,
                                           states=(TrialState.COMPLETE, TrialState.FAIL))
               if not _interrupted(t))
