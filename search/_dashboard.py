"""``taskpack dashboard RECIPE``: optuna-dashboard on the run's search studies.

An RDB ``search.storage`` holds every task's study, so the dashboard shows them all. The default
storage is one journal file per task under the run folder (``search/task-K.journal``); the
dashboard opens one of them (``--task``, default: the latest task that has one). It reads the
storage live, so it can be opened while the run searches.

optuna-dashboard is a dependency of taskpack (imported only here); without it the command says
how to install it and exits 2.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from pipeline.errors import InputError
from pipeline.recipe import Recipe

__all__ = ["DashboardStorage", "dashboard_storage", "serving"]

log = logging.getLogger(__name__)
_JOURNAL = re.compile(r"task-(\d+)\.journal")


@dataclass
class DashboardStorage:
    storage: Any  # an Optuna storage
    where: str  # in words, for the line the command prints


def dashboard_storage(recipe: Recipe, run_dir: Path, task: int | None = None) -> DashboardStorage:
    """The storage holding the run's studies: ``search.storage`` if set, else task ``task``'s
    journal (default: the highest-numbered one). InputError when there is none yet."""
    if recipe.search.storage:
        from search._storage import _rdb, _shown, rdb_url

        # the run's own opener: a missing driver or a dead server is one line, exit 2
        return DashboardStorage(_rdb(recipe.search.storage, recipe.search, None),
                                _shown(rdb_url(recipe.search.storage)))
    folder = run_dir / "search"
    found = sorted((int(m[1]), p) for p in (folder.glob("task-*.journal") if folder.is_dir()
                                            else ()) if (m := _JOURNAL.fullmatch(p.name)))
    if not found:
        raise InputError(f"{folder}: no search study yet; run `taskpack run` on the recipe "
                         "(with search.enabled: true) first")
    journals = dict(found)
    if task is None:
        task = found[-1][0]
    elif task not in journals:
        raise InputError(f"--task {task}: no study for it in {folder}; studies exist for "
                         f"tasks {sorted(journals)}")
    from optuna.storages.journal import JournalFileBackend

    path = journals[task]
    others = f" (other tasks: --task {', '.join(str(t) for t in journals if t != task)})" \
        if len(journals) > 1 else ""
    return DashboardStorage(optuna.storages.JournalStorage(JournalFileBackend(str(path))),
                            f"{path}{others}")


def _app(storage: Any) -> Any:
    try:
        from optuna_dashboard import wsgi
    except ImportError:
        raise InputError("optuna-dashboard is not installed: pip install "
                         "'optuna-dashboard==0.21.0' (a dependency of taskpack)") from None
    return wsgi(storage)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        log.debug("dashboard: " + format, *args)


@contextmanager
def serving(storage: Any, host: str = "127.0.0.1", port: int = 8080) -> Iterator[WSGIServer]:
    """optuna-dashboard served on ``host:port`` (0: a free port; ``server.server_port`` says
    which) in a background thread, stopped when the block ends."""
    app = _app(storage)
    try:
        server = make_server(host, port, app, handler_class=_QuietHandler)
    except OSError as exc:
        raise InputError(f"cannot serve the dashboard on {host}:{port}: {exc.strerror}; "
                         "pick another --port") from None
    thread = threading.Thread(target=server.serve_forever, name="optuna-dashboard", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
