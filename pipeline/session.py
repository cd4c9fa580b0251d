"""The typed values a run passes between its stages: the session, a task's context, results.

This module holds data only and imports nothing of the run itself (runner, stages, resume state,
artifacts, compressors all import it, never each other's internals), so the stages form no
import circle.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.data import Split, Stream, Task
from pipeline.device import TrainDevice
from pipeline.evaluation import AccuracyMatrix
from pipeline.methods import Method, TaskMasks
from pipeline.models import ContinualNet
from pipeline.progress import Bars
from pipeline.recipe import Recipe
from pipeline.store import PackedStore
from pipeline.tracking import Run

__all__ = ["RunResult", "Session", "TaskContext", "TaskRecord", "TrainReport"]


@dataclass
class Session:
    """Everything one run holds while it goes through its tasks."""

    recipe: Recipe
    stream: Stream
    model: ContinualNet
    method: Method
    scratch: ContinualNet  # the untrained model, for FWT's random-init baseline
    store: PackedStore
    run_dir: Path
    device: TrainDevice = field(default_factory=TrainDevice.host)
    tests: list[Split] = field(default_factory=list)

    def load_task(self, index: int) -> Task:
        """Task ``index`` of the stream, its data on the training device."""
        return self.stream.load(index).to(self.device.device)


@dataclass
class TaskContext:
    """One task between training and commit: what a ``Compressor`` works on."""

    task: Task
    masks: TaskMasks
    bars: Bars
    run: Run

    @property
    def index(self) -> int:
        return self.task.index


@dataclass
class TrainReport:
    epochs: int
    best_epoch: int
    best_val_loss: float
    best_val_acc: float
    final_lr: float
    seconds: float
    epoch_seconds: list[float] = field(default_factory=list)  # per epoch, validation included
    # training cost (examples_seen, backward_flops) and the plugins' figures (pipeline.plugins)
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class TaskRecord:
    index: int
    name: str
    train: TrainReport | None
    masks: TaskMasks | None
    acc_at_commit: float
    val_acc: float
    compression: dict[str, float] = field(default_factory=dict)
    resumed: bool = False  # committed by an earlier process of a resumed run


@dataclass
class RunResult:
    recipe: Recipe
    run_dir: Path
    matrix: AccuracyMatrix
    tasks: list[TaskRecord] = field(default_factory=list)
    wall_s: float = 0.0
    # wall seconds of the earlier, interrupted part of a resumed run (from progress.json)
    prior_wall_s: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    run_id: str = ""
    where: str = ""
    store_path: Path | None = None
    resumed_from: int = 0
    store_metrics: dict[str, float] = field(default_factory=dict)

    def elapsed(self) -> float:
        """Wall seconds of the whole run so far, interrupted parts of a resumed run included."""
        return self.prior_wall_s + time.perf_counter() - self.started

    @property
    def acc(self) -> float:
        return self.matrix.acc()

    @property
    def bwt(self) -> float:
        return self.matrix.bwt()
