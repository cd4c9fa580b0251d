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

from pipeline.errors import InputError
from pipeline.methods import TaskMasks
from search._publish import load_published, published_paths

log = logging.getLogger(__name__)


def run_worker(recipe, task: int, wait_s: float = 600.0, tracker=None, bars=None) -> None:
    """Add trials to task ``task``'s study until its budget is reached."""
    from pipeline.progress import QUIET
    from pipeline.runner import prepare, run_dir_for
    from pipeline.session import TaskContext
    from pipeline.tracking import NoopTracker
    from search._compressor import SearchCompressor

    compressor = SearchCompressor(recipe, worker=True)  # checks search.storage first
    # wait for the run to publish the task before touching the run folder: the run creates
    # the store, and a worker that started first would race it to create the store
    state, meta = published_paths(run_dir_for(recipe), task)
    deadline = time.monotonic() + wait_s
    if not (state.exists() and meta.exists()):
        log.info("waiting up to %.0f s for `taskpack run` to reach task %d's search", wait_s,
                 task)
    while not (state.exists() and meta.exists()):
        if time.monotonic() > deadline:
            raise InputError(f"{state} did not appear within {wait_s:.0f} s: start "
                             "`taskpack run` on the recipe first; workers join its search")
        time.sleep(1.0)
    s = prepare(recipe)
    if s.store.num_tasks != task:
        raise InputError(f"task {task} is not being searched: the store holds "
                         f"{s.store.num_tasks} committed task(s)")
    for t in range(task + 1):
        s.model.add_task(s.stream.task_info(t)[1])
    # store state first (frozen / splittable positions), then the task's trained weights on top
    if task:
        s.method.after_commit(task - 1, s.store)
    weights, mask, own, shared = load_published(state)
    s.model.load_state_dict(weights)
    masks = TaskMasks(s.method.from_store(mask), s.method.from_store(own),
                      s.method.from_store(shared))
    tracker = tracker or NoopTracker()
    parent_id = json.loads(meta.read_text()).get("mlflow_run_id")
    run = tracker.open(parent_id) if parent_id else tracker.start(f"task-{task}-worker")
    data = s.load_task(task)
    compressor.compress(s, TaskContext(data, masks, bars or QUIET, run))
