"""A task's trained state, published for search workers while the run searches it.

When the run reaches task K's search it publishes the task's trained state
(``search/task-K-trained.npz``: the live model right after training plus the task's masks), and
retracts it once the task is searched (see ``search._worker``). A run interrupted during the
search finds it on the re-run and starts the search again from it instead of retraining the task
(``SearchCompressor.resume_trained``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from pipeline._atomic import atomic_write
from pipeline.methods import TaskMasks
from pipeline.session import Session
from pipeline.tracking import Run

__all__ = ["load_published", "published_paths", "publish_task", "retract_task"]


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


def load_published(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor],
                                        dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The model state, mask, own and shared tensors of a published task (no pickle)."""
    with np.load(path, allow_pickle=False) as z:
        parts = {part: {k.split("/", 1)[1]: torch.from_numpy(z[k]) for k in z.files
                        if k.startswith(f"{part}/")}
                 for part in ("state", "mask", "own", "shared")}
    return parts["state"], parts["mask"], parts["own"], parts["shared"]
