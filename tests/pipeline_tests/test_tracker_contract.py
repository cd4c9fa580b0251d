"""Contract tests every ``Tracker`` passes: the run tree (parent, children, reopen) and what
is logged can be read back. MLflow runs against a real sqlite store in a temporary folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.tracking import NoopRun, NoopTracker, Run, Tracker


class TrackerContract:
    def make(self, tmp_path: Path) -> Tracker:
        raise NotImplementedError

    def read_back(self, tracker: Tracker, run: Run) -> tuple[dict, dict, dict]:
        """(params, metrics, tags) as the tracker recorded them."""
        raise NotImplementedError

    def test_parent_child_and_reopen(self, tmp_path: Path) -> None:
        tracker = self.make(tmp_path)
        parent = tracker.start("recipe", tags={"taskpack.stream": "s"})
        child = parent.child("task-0", tags={"taskpack.task": "0"})
        assert child.run_id != parent.run_id
        assert parent.reopen(child.run_id).run_id == child.run_id
        assert tracker.open(parent.run_id).run_id == parent.run_id
        child.end("FINISHED")
        parent.end("KILLED")

    def test_logged_values_read_back(self, tmp_path: Path) -> None:
        tracker = self.make(tmp_path)
        run = tracker.start("recipe")
        run.log_params({"train.lr": "0.001"})
        run.log_metrics({"acc": 97.5})
        run.log_metrics({"acc_mean_so_far": 90.0}, step=1)
        run.set_tags({"k": "v"})
        artifact = tmp_path / "a.txt"
        artifact.write_text("x")
        run.log_artifact(artifact)
        run.end()
        params, metrics, tags = self.read_back(tracker, run)
        assert params["train.lr"] == "0.001"
        assert metrics["acc"] == 97.5 and metrics["acc_mean_so_far"] == 90.0
        assert tags["k"] == "v"


class TestNoopTracker(TrackerContract):
    def make(self, tmp_path: Path) -> Tracker:
        return NoopTracker()

    def read_back(self, tracker: Tracker, run: Run) -> tuple[dict, dict, dict]:
        assert isinstance(run, NoopRun)
        return run.params, run.metrics, run.tags


class TestMlflowTracker(TrackerContract):
    def make(self, tmp_path: Path) -> Tracker:
        from pipeline.tracking._mlflow import MlflowTracker

        return MlflowTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "contract",
                             str(tmp_path / "artifacts"))

    def read_back(self, tracker: Tracker, run: Run) -> tuple[dict, dict, dict]:
        from pipeline.tracking._mlflow import MlflowRun

        assert isinstance(run, MlflowRun)
        data = run.client.get_run(run.run_id).data
        return data.params, data.metrics, data.tags


def test_tracker_is_abstract() -> None:
    with pytest.raises(TypeError):
        Tracker()  # type: ignore[abstract]
