"""MLflow tracker: sqlite backend + file artifacts under ``mlruns/`` by default.

The experiment is created with a description and MLflow's ``mlflow.experimentKind`` tag set to
``custom_model_development`` (MLflow 3.x opens an experiment without it in its GenAI mode), and,
when the artifacts sit beside a local tracking store, with an artifact location relative to it
(``pipeline.tracking._relative``), so ``mlruns/`` can be moved with its artifacts.

Uses ``MlflowClient`` rather than mlflow's global active-run stack, so parent and child runs are
explicit objects and a Ctrl-C can end each one with the right status.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path

from pipeline.tracking._base import Run, Status, Tracker

log = logging.getLogger(__name__)
_PARAM_BATCH = 100  # MLflow's limit per log_batch call
# read by the MLflow UI: the experiment kind (from the UI's own enum: "custom_model_development"
# is its classic machine-learning view) and the experiment description (a markdown note)
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
DESCRIPTION_TAG = "mlflow.note.content"
DESCRIPTION = (
    "taskpack runs. One parent run per recipe run (params: the resolved recipe; artifacts: "
    "report.html, accuracy matrix, store), a child run `task-K` per task (params: the committed "
    "plan; tags: taskpack.task, taskpack.task_name; artifacts: the task's Pareto front), and, "
    "when the recipe searches, a nested run `task-K/trial-N` per trial (tags: taskpack.task, "
    "taskpack.target, taskpack.method, feasible, pareto, chosen). Group trials by "
    "`taskpack.task` in the chart view.")


class MlflowRun(Run):
    def __init__(self, client, run_id: str, experiment_id: str) -> None:
        self.client, self.run_id, self.experiment_id = client, run_id, experiment_id
        self._ended = False

    def log_params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), _PARAM_BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + _PARAM_BATCH])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step or 0) for k, v in metrics.items()
                 if v is not None and not math.isnan(float(v))]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def set_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def child(self, name: str, tags: dict[str, str] | None = None) -> MlflowRun:
        run = self.client.create_run(
            self.experiment_id, run_name=name,
            tags={"mlflow.parentRunId": self.run_id, **(tags or {})},
        )
        return MlflowRun(self.client, run.info.run_id, self.experiment_id)

    def reopen(self, run_id: str) -> MlflowRun:
        run = MlflowRun(self.client, run_id, self.experiment_id)
        run._ended = True  # ending stays with whoever started it
        return run

    def end(self, status: Status = "FINISHED") -> None:
        if not self._ended:
            self.client.set_terminated(self.run_id, status=status)
            self._ended = True


class MlflowTracker(Tracker):
    def __init__(self, uri: str, experiment: str, artifact_location: str) -> None:
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # no "Creating tables..." noise
        from mlflow.tracking import MlflowClient

        from pipeline.tracking._relative import register, relative_location

        register()
        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = relative_location(uri, artifact_location) or (
                artifact_location if "://" in artifact_location
                else Path(artifact_location).resolve().as_uri())
            self.experiment_id = self.client.create_experiment(
                experiment, location, tags=dict([EXPERIMENT_KIND, (DESCRIPTION_TAG, DESCRIPTION)]))
        else:
            self.experiment_id = exp.experiment_id
            # experiments created before these tags: add them, keep a description a user wrote
            missing = {k: v for k, v in (EXPERIMENT_KIND, (DESCRIPTION_TAG, DESCRIPTION))
                       if k not in exp.tags}
            for k, v in missing.items():
                self.client.set_experiment_tag(self.experiment_id, k, v)

    def start(self, name: str, tags: dict[str, str] | None = None) -> MlflowRun:
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags or {})
        return MlflowRun(self.client, run.info.run_id, self.experiment_id)

    def open(self, run_id: str) -> MlflowRun:
        run = MlflowRun(self.client, run_id, self.experiment_id)
        run._ended = True  # its owner ends it
        return run

    def where(self) -> str:
        return f"mlflow ui --backend-store-uri {self.uri}"
