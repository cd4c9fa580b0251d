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


def test_mlflow_experiment_opens_in_the_ml_view_with_a_description(tmp_path: Path) -> None:
    from pipeline.tracking._mlflow import DESCRIPTION_TAG, MlflowTracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, "kinds", str(tmp_path / "artifacts"))
    tags = tracker.client.get_experiment(tracker.experiment_id).tags
    # the value of MLflow 3.x's ExperimentKind enum for classic ML (not its GenAI mode)
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert "task-K/trial-N" in tags[DESCRIPTION_TAG]
    # an experiment made before the tags gets them; a description a user wrote is kept
    old = tracker.client.create_experiment("old", (tmp_path / "old").as_uri(),
                                           tags={DESCRIPTION_TAG: "mine"})
    MlflowTracker(uri, "old", str(tmp_path / "old"))
    tags = tracker.client.get_experiment(old).tags
    assert tags[DESCRIPTION_TAG] == "mine"
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def test_moving_mlruns_keeps_the_artifacts(tmp_path: Path, monkeypatch) -> None:
    import shutil

    from mlflow.tracking import MlflowClient

    from pipeline.tracking._mlflow import MlflowTracker

    monkeypatch.chdir(tmp_path)  # the recipe's defaults: relative to the working directory
    tracker = MlflowTracker("sqlite:///mlruns/mlflow.db", "taskpack", "mlruns/artifacts")
    parent = tracker.start("recipe")
    child = parent.child("task-0")
    (tmp_path / "chosen.json").write_text("{}")
    child.log_artifact(tmp_path / "chosen.json", "pareto")
    parent.log_artifact(tmp_path / "chosen.json")
    child.end()
    parent.end()
    stored = tracker.client.get_run(child.run_id).info.artifact_uri
    assert str(tmp_path) not in stored and stored.startswith("taskpack-mlruns:artifacts/")

    shutil.move(tmp_path / "mlruns", tmp_path / "elsewhere" / "copy")
    monkeypatch.chdir("/")
    client = MlflowClient(f"sqlite:///{tmp_path / 'elsewhere/copy/mlflow.db'}")
    assert [a.path for a in client.list_artifacts(child.run_id, "pareto")] == [
        "pareto/chosen.json"]
    assert [a.path for a in client.list_artifacts(parent.run_id)] == ["chosen.json"]
    got = Path(client.download_artifacts(child.run_id, "pareto/chosen.json", str(tmp_path)))
    assert got.read_text() == "{}"


def test_artifacts_outside_the_tracking_folder_stay_absolute(tmp_path: Path) -> None:
    from pipeline.tracking._relative import relative_location

    uri = f"sqlite:///{tmp_path / 'mlruns/mlflow.db'}"
    assert relative_location(uri, str(tmp_path / "mlruns/artifacts")) == \
        "taskpack-mlruns:artifacts"
    assert relative_location(uri, str(tmp_path / "other")) is None
    assert relative_location("http://server:5000", "mlruns/artifacts") is None
    assert relative_location(uri, "s3://bucket/x") is None


def test_plain_mlflow_reads_moved_artifacts_through_the_entry_point(tmp_path: Path,
                                                                     monkeypatch) -> None:
    """What `mlflow ui` does: a process that never imports taskpack finds the scheme through
    the ``mlflow.artifact_repository`` entry point (installed by ``pip install -e .``)."""
    import subprocess
    import sys
    from importlib.metadata import entry_points

    from pipeline.tracking._mlflow import MlflowTracker

    if not any(e.name == "taskpack-mlruns"
               for e in entry_points(group="mlflow.artifact_repository")):
        pytest.skip("taskpack's entry points are not installed in this environment "
                    "(pip install -e . installs them)")
    monkeypatch.chdir(tmp_path)
    # an absolute URI: MLflow caches one engine per URI, and the relative one of the test above
    # still points at the database that test moved away (sqlite: "readonly database")
    tracker = MlflowTracker(f"sqlite:///{tmp_path}/mlruns/mlflow.db", "taskpack",
                            "mlruns/artifacts")
    run = tracker.start("recipe")
    (tmp_path / "report.html").write_text("<html></html>")
    run.log_artifact(tmp_path / "report.html")
    run.end()
    (tmp_path / "mlruns").rename(tmp_path / "moved")
    code = ("from mlflow.tracking import MlflowClient; "
            f"c = MlflowClient('sqlite:///{tmp_path / 'moved/mlflow.db'}'); "
            f"print([a.path for a in c.list_artifacts('{run.run_id}')])")
    out = subprocess.run([sys.executable, "-c", code], cwd="/", capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['report.html']"
