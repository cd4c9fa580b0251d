"""Where a study lives: a journal file under the run folder, or an RDB shared by workers.

RDB URLs go to Optuna's ``RDBStorage`` (SQLAlchemy). ``postgresql://`` means PostgreSQL through
psycopg 3 (a dependency of taskpack), so it is rewritten to SQLAlchemy's
``postgresql+psycopg://``; a URL naming another driver is used as given. ``check_storage``
connects once before any training, so a missing driver or an unreachable server is one line and
exit 2, not a traceback after the first task trained.

Heartbeats (RDB only): while a trial runs, a thread records its heartbeat every
``search.heartbeat_s``; a running trial silent for ``search.grace_s`` belonged to a process that
died, and ``fail_stale`` (called by every process before it asks, and while the owner waits)
fails it and runs the stale-trial callback (``search._study.retry_stale``). Journal studies
have no heartbeats; their workers share this machine, so a trial whose process is gone is dead.
"""

from __future__ import annotations

import contextlib
import logging
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna

from pipeline._atomic import process_alive
from pipeline.errors import InputError
from pipeline.recipe import SearchConfig

__all__ = ["ask", "beat_once", "check_storage", "close_storage", "delete_studies", "fail_stale",
           "has_heartbeat", "heartbeat", "open_storage", "rdb_url"]

log = logging.getLogger(__name__)
_CREATE_ATTEMPTS = 5
StaleCallback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


def rdb_url(url: str) -> str:
    """``postgresql://`` -> ``postgresql+psycopg://`` (psycopg 3); other URLs as given."""
    return re.sub(r"^postgresql://", "postgresql+psycopg://", url)


def _shown(url: str) -> str:
    """The URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not parsable: say nothing more than the scheme
        return url.split(":", 1)[0] + "://..."


def _rdb(url: str, cfg: SearchConfig,
         on_stale: StaleCallback | None) -> optuna.storages.RDBStorage:
    import sqlalchemy.exc

    full = rdb_url(url)
    # a server that does not answer fails in seconds instead of the driver's default (none)
    kwargs: dict[str, Any] = ({"connect_args": {"connect_timeout": 10}}
                              if full.startswith("postgresql+psycopg") else {})
    try:
        attempt = 1
        while True:
            try:
                with warnings.catch_warnings():  # heartbeat_interval is marked experimental
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(
                        full, engine_kwargs=kwargs, heartbeat_interval=cfg.heartbeat_s,
                        grace_period=cfg.grace_s, heartbeat_stale_trial_callback=on_stale)
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                # PostgreSQL: processes creating Optuna's tables at the same moment collide
                # ("duplicate key ... pg_type_typname_nsp_index"); the tables exist after it
                if attempt == _CREATE_ATTEMPTS:
                    raise
                time.sleep(0.2 * attempt)
                attempt += 1
    except ImportError as e:
        cause = e.__cause__ or e
        raise InputError(
            f"search.storage {_shown(full)}: its database driver cannot be imported ({cause}); "
            "PostgreSQL needs psycopg 3: pip install 'psycopg[binary]' (a dependency of "
            "taskpack)") from None
    except sqlalchemy.exc.SQLAlchemyError as e:
        first = str(getattr(e, "orig", None) or e).strip().splitlines()
        raise InputError(f"search.storage {_shown(full)}: cannot open the study database: "
                         f"{type(e).__name__}: {first[0] if first else ''}") from None


def check_storage(cfg: SearchConfig) -> None:
    """Connect to ``cfg.storage`` (creating Optuna's tables) and close again; raises
    ``InputError`` with one line when the driver is missing or the server cannot be used."""
    if cfg.storage:
        close_storage(_rdb(cfg.storage, cfg, None))


def open_storage(cfg: SearchConfig, default_journal: Path,
                 on_stale: StaleCallback | None = None) -> Any:
    """An ``RDBStorage`` with heartbeats for ``cfg.storage``, else a journal file (created on
    first use; no heartbeats: its workers share this machine)."""
    if cfg.storage:
        return _rdb(cfg.storage, cfg, on_stale)
    from optuna.storages.journal import JournalFileBackend

    default_journal.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(default_journal)))


def close_storage(storage: Any) -> None:
    """Close an RDB storage's connections (a run opens one storage per task)."""
    if isinstance(storage, optuna.storages.RDBStorage):
        storage.engine.dispose()


def has_heartbeat(storage: Any) -> bool:
    return (isinstance(storage, optuna.storages.RDBStorage)
            and storage.heartbeat_interval is not None)


def ask(study: optuna.Study) -> optuna.Trial:
    """``study.ask()``. Optuna warns that heartbeats are meant for ``Study.optimize``; the
    ask-and-tell loop records them itself (``heartbeat``), so that warning says nothing here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used",
                                UserWarning)
        return study.ask()


def beat_once(storage: Any, trial: optuna.Trial) -> None:
    """Record one heartbeat of ``trial`` (RDB only)."""
    if has_heartbeat(storage):
        # Trial exposes no public id; the storage's heartbeat API takes this one
        storage.record_heartbeat(trial._trial_id)


@contextlib.contextmanager
def heartbeat(storage: Any, trial: optuna.Trial) -> Iterator[None]:
    """Record ``trial``'s heartbeat now and every ``heartbeat_interval`` s until the block ends.

    The first beat is recorded before the block runs: Optuna never takes a trial without one for
    stale, so a process killed before its first beat would leave the trial running forever.
    """
    if not has_heartbeat(storage):
        yield
        return
    trial_id = trial._trial_id
    beat_once(storage, trial)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(storage.heartbeat_interval):
            try:
                storage.record_heartbeat(trial_id)
            except Exception as e:  # the next beat may get through; past the grace period
                # the trial is failed and retried, and this process drops its result
                log.warning("trial %d: heartbeat not recorded (%s)", trial.number, e)

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale(study: optuna.Study, storage: Any, on_stale: StaleCallback) -> None:
    """Fail the study's running trials whose process died and pass each to ``on_stale``.

    RDB: Optuna's heartbeat check (the storage runs its own callback, ``on_stale`` too). A
    journal lives on this machine, so its trials' processes do too: a running trial whose
    ``pid`` user attr names no live process is dead.
    """
    if has_heartbeat(storage):
        with warnings.catch_warnings():  # fail_stale_trials is marked experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return
    for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if pid is None or process_alive(pid):  # no pid recorded yet: assume it runs
            continue
        try:  # as Optuna's heartbeat check does: of two processes, one fails it
            if not storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        on_stale(study, t)


def delete_studies(cfg: SearchConfig, pattern: str) -> list[str]:
    """Delete every study in ``cfg.storage`` whose name fully matches ``pattern`` (``--fresh``);
    the journal storage lives in the run folder, which ``--fresh`` deletes anyway."""
    if not cfg.storage:
        return []
    storage = _rdb(cfg.storage, cfg, None)
    try:
        names = [n for n in optuna.get_all_study_names(storage) if re.fullmatch(pattern, n)]
        for name in names:
            optuna.delete_study(study_name=name, storage=storage)
        return names
    finally:
        close_storage(storage)
