"""The tracker interface: one parent run per recipe run, a child run per task (per trial later)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

Status = Literal["FINISHED", "FAILED", "KILLED"]


class Run(ABC):
    """A tracked run. Children nest under their parent."""

    run_id: str

    @abstractmethod
    def log_params(self, params: dict[str, str]) -> None: ...

    @abstractmethod
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None: ...

    @abstractmethod
    def log_artifact(self, path: Path, folder: str | None = None) -> None: ...

    @abstractmethod
    def set_tags(self, tags: dict[str, str]) -> None: ...

    @abstractmethod
    def child(self, name: str, tags: dict[str, str] | None = None) -> Run: ...

    @abstractmethod
    def end(self, status: Status = "FINISHED") -> None: ...

    @abstractmethod
    def reopen(self, run_id: str) -> Run:
        """Another run of the same tracker by id (e.g. a trial run of an earlier process)."""


class Tracker(ABC):
    @abstractmethod
    def start(self, name: str, tags: dict[str, str] | None = None) -> Run: ...

    @abstractmethod
    def open(self, run_id: str) -> Run:
        """An existing run, to add children to (a search worker joins its task's run)."""

    def where(self) -> str:
        """A line telling a person where to look at the runs."""
        return ""


class NoopRun(Run):
    """Accepts everything, keeps the last values in memory (handy in unit tests)."""

    def __init__(self, name: str = "run") -> None:
        self.run_id, self.name = name, name
        self.params: dict[str, str] = {}
        self.metrics: dict[str, float] = {}
        self.tags: dict[str, str] = {}
        self.artifacts: list[Path] = []
        self.children: list[NoopRun] = []
        self.status: str = "RUNNING"

    def log_params(self, params: dict[str, str]) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.metrics.update(metrics)

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.artifacts.append(Path(path))

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tags.update(tags)

    def child(self, name: str, tags: dict[str, str] | None = None) -> NoopRun:
        run = NoopRun(f"{self.run_id}/{name}")
        run.tags.update(tags or {})
        self.children.append(run)
        return run

    def end(self, status: Status = "FINISHED") -> None:
        self.status = status

    def reopen(self, run_id: str) -> NoopRun:
        found = [c for c in self.children if c.run_id == run_id]
        return found[0] if found else NoopRun(run_id)


class NoopTracker(Tracker):
    def __init__(self) -> None:
        self.runs: list[NoopRun] = []

    def start(self, name: str, tags: dict[str, str] | None = None) -> NoopRun:
        run = NoopRun(name)
        run.tags.update(tags or {})
        self.runs.append(run)
        return run

    def open(self, run_id: str) -> NoopRun:
        return NoopRun(run_id)
