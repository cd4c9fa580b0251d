"""Bundles in MLflow: each export logged to its task's run and registered as an MLflow model.

For every bundle folder: the manifest, the latency per batch size and the bundle's files go to the
task's run (the newest run tagged ``taskpack.task=<k>`` whose parent run is named after the
recipe; a run ``export task-<k>`` when the store's run was not tracked), under
``exports/<target>/task-<k>/``. The bundle is also logged as an MLflow pyfunc model (the wrapper
``compilers/tvm/bundle_pyfunc.py``, logged as code, so serving needs no taskpack) and registered as
``<recipe name>-<target>-task-<k>``, so ``mlflow models serve -m models:/<name>/<version>`` serves
it with ONNX Runtime.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.recipe import Recipe

__all__ = ["find_task_run", "pyfunc_code", "quiet_pyfunc", "registered_name", "track_exports"]

log = logging.getLogger(__name__)
PYFUNC_MODULE = "compilers.tvm.bundle_pyfunc"  # a file MLflow copies, never imported here


def pyfunc_code() -> Path:
    """The wrapper's source file (found without importing it: it needs mlflow and sets the
    model on import)."""
    spec = importlib.util.find_spec(PYFUNC_MODULE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"{PYFUNC_MODULE} must be installed with taskpack, found none")
    return Path(spec.origin)


@contextlib.contextmanager
def quiet_pyfunc() -> Iterator[None]:
    """Importing ``mlflow.pyfunc`` (3.17) warns that its own chat types' ``Any`` hints are not
    validated: nothing the user can act on, so that one UserWarning is silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*type hint is inferred as AnyType",
                                category=UserWarning)
        yield


def registered_name(recipe: Recipe, target: str, task: int) -> str:
    return f"{recipe.name}-{target}-task-{task}"


def find_task_run(client: Any, experiment_id: str, recipe: Recipe, task: int) -> str | None:
    """The newest run of task ``task`` under a parent run named ``recipe.name``, if any."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`taskpack.task` = '{task}'",
                              order_by=["attributes.start_time DESC"], max_results=50)
    parents: dict[str, str] = {}
    for run in runs:
        pid = run.data.tags.get("mlflow.parentRunId")
        if pid is None:
            continue
        if pid not in parents:
            parents[pid] = client.get_run(pid).info.run_name or ""
        if parents[pid] == recipe.name:
            return str(run.info.run_id)
    return None


def track_exports(recipe: Recipe, folders: list[Path]) -> list[str]:
    """Log and register every bundle in ``folders``; returns one console line per bundle."""
    if not recipe.tracking.enabled or not folders:
        return []
    from pipeline.tracking._mlflow import MlflowTracker

    tracker = MlflowTracker(recipe.tracking.uri, recipe.tracking.experiment,
                            recipe.tracking.artifact_location)
    return [_track_one(tracker, recipe, folder) for folder in folders]


def _track_one(tracker: Any, recipe: Recipe, folder: Path) -> str:
    import mlflow

    manifest = json.loads((folder / "manifest.json").read_text())
    task, target = int(manifest["task"]), str(manifest["target"]["name"])
    client = tracker.client
    run_id = find_task_run(client, tracker.experiment_id, recipe, task)
    status = "FINISHED"  # what the run is left as
    if run_id is None:  # the store's run was not tracked: the export gets a run of its own
        run_id = tracker.start(f"export task-{task}", tags={"taskpack.task": str(task)}).run_id
    else:
        status = client.get_run(run_id).info.status  # start_run below reopens the run
    prefix = f"exports/{target}"
    run = tracker.open(run_id)
    run.log_metrics({f"export/{target}/latency_ms_b{b}": m["median_ms"]
                     for b, m in (manifest.get("latency_by_batch") or {}).items()})
    run.set_tags({f"taskpack.export.{target}": str(folder),
                  f"taskpack.export.{target}.batch_sizes": str(manifest["batch_sizes"])})
    client.log_artifacts(run_id, str(folder), f"{prefix}/task-{task}")
    name = registered_name(recipe, target, task)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracker.uri)
    try:
        with quiet_pyfunc(), mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=f"bundle-{target}-task-{task}", python_model=str(pyfunc_code()),
                artifacts={"bundle": str(folder)}, registered_model_name=name,
                signature=_signature(manifest), model_config={"runtime": "onnx"},
                input_example=_example(manifest),
                pip_requirements=_requirements(), await_registration_for=0)
    finally:
        mlflow.set_tracking_uri(previous)
    if client.get_run(run_id).info.status != status:  # as it was: FINISHED, FAILED, KILLED
        client.set_terminated(run_id, status)
    version = info.registered_model_version
    return f"mlflow: {folder} logged to run {run_id}, registered as models:/{name}/{version}"


def _signature(manifest: dict[str, Any]) -> Any:
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    def spec(entry: dict[str, Any]) -> Any:
        shape = tuple(-1 if d == "batch" else int(d) for d in entry["shape"])
        return TensorSpec(np.dtype(entry["dtype"]), shape, entry["name"])

    return ModelSignature(inputs=Schema([spec(e) for e in manifest["inputs"]]),
                          outputs=Schema([spec(e) for e in manifest["outputs"]]))


def _example(manifest: dict[str, Any]) -> Any:
    import numpy as np

    entry = manifest["inputs"][0]
    return np.zeros([1, *entry["shape"][1:]], np.dtype(entry["dtype"]))


def _requirements() -> list[str]:
    """What serving the pyfunc needs (pinned to what is installed; never inferred: inferring
    loads the model in a subprocess)."""
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "numpy", "onnxruntime")]
