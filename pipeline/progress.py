"""Progress bars for loops a person waits for; silent when stderr is not a terminal."""

from __future__ import annotations

import sys
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


class Bars:
    """A thin wrapper over ``rich.progress.Progress`` with an on/off switch."""

    def __init__(self, enabled: bool | None = None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._progress: Progress | None = None
        if self.enabled:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False,
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
