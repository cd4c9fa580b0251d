"""Resume state: what a killed run needs to continue exactly where it stopped.

Order of writes per task: ``state-<k>.npz`` (the live model right before task k-1 is committed),
then the store commit, then ``progress.json`` (the accuracy rows measured after it, and each
task's record with its training report, so a resumed run still reports the whole run's training
cost). After a kill at any point, ``store.num_tasks`` says how many tasks are committed;
``state-<n>.npz`` gives the live weights and scores of that moment (syncing with the store is
deterministic), and rows missing from ``progress.json`` are re-measured from the store, which
gives the same figures because committed tasks never change. Files are written atomically (temp +
rename) and hold no pickle.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import torch

from pipeline._atomic import atomic_write
from pipeline.errors import InputError
from pipeline.session import RunResult, Session, TaskRecord, TrainReport
from pipeline.stages import stage_evaluate

__all__ = ["load_state", "save_state", "save_state_before_commit"]

_METHOD = "method/"  # prefix of the method's own resume tensors in state-<k>.npz


def save_state_before_commit(s: Session, tasks_after_commit: int) -> None:
    """The live model (and the method's own state) right before the commit that makes
    ``tasks_after_commit`` tasks."""
    arrays = {k: v.detach().cpu().numpy() for k, v in s.model.state_dict().items()}
    arrays |= {_METHOD + k: v.detach().cpu().numpy() for k, v in s.method.state_dict().items()}
    atomic_write(s.run_dir / f"state-{tasks_after_commit}.npz", lambda f: np.savez(f, **arrays))


def save_state(s: Session, result: RunResult) -> None:
    """Accuracy rows and per-task records measured so far (after the commit)."""
    m = result.matrix
    data = {"tasks_done": len(m.rows), "rows": m.rows, "before": m.before,
            "baseline": m.baseline, "inferred": m.inferred, "wall_s": result.elapsed(),
            "records": [{"index": r.index, "name": r.name, "acc_at_commit": r.acc_at_commit,
                         "val_acc": r.val_acc, "compression": r.compression,
                         "train": dataclasses.asdict(r.train) if r.train else None}
                        for r in result.tasks]}
    atomic_write(s.run_dir / "progress.json", lambda f: f.write(json.dumps(data).encode()))
    # only now, with the commit on disk, is the previous state no longer needed
    keep = s.run_dir / f"state-{s.store.num_tasks}.npz"
    for old in s.run_dir.glob("state-*.npz"):
        if old != keep:
            old.unlink()


def _train_report(saved: Any) -> TrainReport | None:  # noqa: ANN401 - JSON
    """The training report of a task an earlier process committed (None: not recorded, as in
    progress files written before it was, or not readable)."""
    if not isinstance(saved, dict):
        return None
    try:
        return TrainReport(**saved)
    except TypeError:  # fields of another version: the figures are lost, the run is not
        return None


def load_state(s: Session, result: RunResult) -> int:
    """Restore a run with committed tasks; returns how many tasks are already done."""
    n = s.store.num_tasks
    if n == 0:
        return 0
    path = s.run_dir / f"state-{n}.npz"
    if not path.exists():
        raise InputError(f"{s.store.path} holds {n} task(s) but {path} is missing, so the run "
                         "cannot continue; re-run with --fresh to start over")
    for t in range(n):
        s.model.add_task(s.stream.task_info(t)[1])
    with np.load(path, allow_pickle=False) as z:
        tensors = {k: torch.from_numpy(z[k]) for k in z.files}
    s.model.load_state_dict({k: v for k, v in tensors.items() if not k.startswith(_METHOD)})
    s.method.load_state_dict({k.removeprefix(_METHOD): v for k, v in tensors.items()
                              if k.startswith(_METHOD)})
    s.method.after_commit(n - 1, s.store)  # syncing with the store is deterministic
    progress = s.run_dir / "progress.json"
    data = json.loads(progress.read_text()) if progress.exists() else {"records": [], "rows": []}
    m = result.matrix
    result.prior_wall_s = float(data.get("wall_s", 0.0))
    m.rows, m.before, m.baseline = data["rows"][:n], data.get("before", [])[:n], \
        data.get("baseline", [])[:n]
    m.inferred = data.get("inferred", [])[:n]
    for t in range(n):
        s.tests.append(s.load_task(t).test)
    for i in range(len(m.rows), n):  # rows lost to a kill between commit and progress
        m.add_row(*stage_evaluate(s, i))
    for t in range(n):
        rec: dict[str, Any] = data["records"][t] if t < len(data["records"]) else {
            "index": t, "name": s.stream.task_info(t)[0],
            "acc_at_commit": m.rows[t][t], "val_acc": float("nan"), "compression": {}}
        result.tasks.append(TaskRecord(rec["index"], rec["name"], _train_report(rec.get("train")),
                                       None, rec["acc_at_commit"], rec["val_acc"],
                                       rec["compression"], resumed=True))
    return n
