"""Extra search workers: ``taskpack search RECIPE --task K --worker``.

When the run reaches task K's search it publishes the task's trained state
(``search/task-K-trained.npz``: the live model right after training plus the task's masks). A
worker process (on this machine with the default journal study, or on other machines sharing an RDB
``search.storage`` and the run folder) rebuilds the same session from the store and that file,
then adds trials to the same Optuna study until the budget is reached. The run that owns the task
waits for running trials, selects and commits; workers never commit.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from pipeline._atomic import atomic_write
from pipeline.errors import InputError
from pipeline.methods import TaskMasks

log = logging.getLogger(__name__)


def _paths(run_dir: Path, task: int) -> tuple[Path, Path]:
    folder = run_dir / "search"
    return folder / f"task-{task}-trained.npz", folder / f"task-{task}-trained.json"


def publish_task(s, task: int, masks: TaskMasks, run) -> None:
    state, meta = _paths(s.run_dir, task)
    state.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"state/{k}": v.detach().cpu().numpy() for k, v in s.model.state_dict().items()}
    for name in masks.mask:
        arrays[f"mask/{name}"] = masks.mask[name].numpy()
        arrays[f"own/{name}"] = masks.own[name].numpy()
        arrays[f"shared/{name}"] = masks.shared[name].numpy()
    atomic_write(state, lambda f: np.savez(f, **arrays))
    meta.write_text(json.dumps({"task": task, "mlflow_run_id": run.run_id}))


def retract_task(s, task: int) -> None:
    """The task is searched: workers have nothing left to start from."""
    for path in _paths(s.run_dir, task):
        path.unlink(missing_ok=True)


def run_worker(recipe, task: int, wait_s: float = 600.0, tracker=None, bars=None) -> None:
    """Add trials to task ``task``'s study until its budget is reached."""
    from pipeline.progress import QUIET
    from pipeline.runner import prepare
    from pipeline.stages import sync_with_store
    from pipeline.tracking import NoopTracker
    from search import make_search_compressor

    s = prepare(recipe)
    if s.store.num_tasks != task:
        raise InputError(f"task {task} is not being searched: the store holds "
                         f"{s.store.num_tasks} committed task(s)")
    state, meta = _paths(s.run_dir, task)
    deadline = time.monotonic() + wait_s
    while not (state.exists() and meta.exists()):
        if time.monotonic() > deadline:
            raise InputError(f"{state} did not appear within {wait_s:.0f} s: start "
                             "`taskpack run` on the recipe first; workers join its search")
        time.sleep(1.0)
    for t in range(task + 1):
        s.model.add_task(s.stream.task_info(t)[1])
    # store state first (frozen / splittable positions), then the task's trained weights on top
    s.method.restore(task, [s.store.task_masks(t) for t in range(task)])
    sync_with_store(s)
    with np.load(state, allow_pickle=False) as z:
        s.model.load_state_dict({k.removeprefix("state/"): torch.from_numpy(z[k])
                                 for k in z.files if k.startswith("state/")})
        masks = TaskMasks(*({k.split("/", 1)[1]: torch.from_numpy(z[k]) for k in z.files
                             if k.startswith(f"{part}/")} for part in ("mask", "own", "shared")))
    tracker = tracker or NoopTracker()
    parent_id = json.loads(meta.read_text()).get("mlflow_run_id")
    run = tracker.open(parent_id) if parent_id else tracker.start(f"task-{task}-worker")
    data = s.stream.load(task)
    compress = make_search_compressor(recipe, worker=True)
    compress(s, data, masks, bars or QUIET, run)
