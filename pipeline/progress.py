"""Progress bars for loops a person waits for; silent when stderr is not a terminal.

Log lines go through the same rich console as the bars (``ConsoleHandler``, installed by the
CLI), so a line logged while a bar is live is printed above the bars instead of through them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

CONSOLE = Console(stderr=True)  # the one console of a process: bars and log lines


class ConsoleHandler(logging.Handler):
    """A logging handler that prints through a rich console (by default ``CONSOLE``), as plain
    text (no markup, no highlighting), so it shares the screen with live progress bars."""

    def __init__(self, console: Console | None = None, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.console = console or CONSOLE

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.console.print(self.format(record), markup=False, highlight=False,
                               emoji=False, soft_wrap=True)
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


class Bars:
    """A thin wrapper over ``rich.progress.Progress`` with an on/off switch."""

    def __init__(self, enabled: bool | None = None, console: Console | None = None) -> None:
        console = console or CONSOLE
        self.enabled = console.is_terminal if enabled is None else enabled
        self._progress: Progress | None = None
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=console, transient=False,
            )

    def __enter__(self) -> Bars:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def add(self, description: str, total: int) -> int:
        if self._progress is None:
            return -1
        return self._progress.add_task(description, total=total, info="")

    def advance(self, bar: int, steps: int = 1, info: str | None = None) -> None:
        if self._progress is not None and bar >= 0:
            if info is None:
                self._progress.advance(TaskID(bar), steps)
            else:
                self._progress.update(TaskID(bar), advance=steps, info=info)

    def remove(self, bar: int) -> None:
        if self._progress is not None and bar >= 0:
            self._progress.remove_task(TaskID(bar))

    @contextmanager
    def bar(self, description: str, total: int, keep: bool = False) -> Iterator[int]:
        handle = self.add(description, total)
        try:
            yield handle
        finally:
            if not keep:
                self.remove(handle)


QUIET = Bars(enabled=False)
