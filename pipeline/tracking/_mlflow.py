"""MLflow tracker: sqlite backend + file artifacts under ``mlruns/`` by default.

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

        if uri.startswith("sqlite:///"):
            Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = artifact_location
            if "://" not in location:
                location = Path(location).resolve().as_uri()
            self.experiment_id = self.client.create_experiment(experiment, location)
        else:
            self.experiment_id = exp.experiment_id

    def start(self, name: str, tags: dict[str, str] | None = None) -> MlflowRun:
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags or {})
        return MlflowRun(self.client, run.info.run_id, self.experiment_id)

    def open(self, run_id: str) -> MlflowRun:
        run = MlflowRun(self.client, run_id, self.experiment_id)
        run._ended = True  # its owner ends it
        return run

    def where(self) -> str:
        return f"mlflow ui --backend-store-uri {self.uri}"
