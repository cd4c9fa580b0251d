"""A task's trained state, published for search workers while the run searches it.

When the run reaches task K's search it publishes the task's trained state
(``search/task-K-trained.npz``: the live model right after training plus the task's masks), and
retracts it once the task is searched (see ``search._worker``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline._atomic import atomic_write
from pipeline.methods import TaskMasks
from pipeline.session import Session
from pipeline.tracking import Run

__all__ = ["published_paths", "publish_task", "retract_task"]


def published_paths(run_dir: Path, task: int) -> tuple[Path, Path]:
    folder = run_dir / "search"
    return folder / f"task-{task}-trained.npz", folder / f"task-{task}-trained.json"


def publish_task(s: Session, task: int, masks: TaskMasks, run: Run) -> None:
    state, meta = published_paths(s.run_dir, task)
    state.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"state/{k}": v.detach().cpu().numpy() for k, v in s.model.state_dict().items()}
    for name in masks.mask:
        arrays[f"mask/{name}"] = masks.mask[name].cpu().numpy()
        arrays[f"own/{name}"] = masks.own[name].cpu().numpy()
        arrays[f"shared/{name}"] = masks.shared[name].cpu().numpy()
    atomic_write(state, lambda f: np.savez(f, **arrays))
    meta.write_text(json.dumps({"task": task, "mlflow_run_id": run.run_id}))


def retract_task(s: Session, task: int) -> None:
    """The task is searched: workers have nothing left to start from."""
    for path in published_paths(s.run_dir, task):
        path.unlink(missing_ok=True)
