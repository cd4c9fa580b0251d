"""Experiment tracking: MLflow for real runs, a no-op tracker for tests."""

from __future__ import annotations

from pipeline.recipe import TrackingConfig
from pipeline.tracking._base import NoopRun, NoopTracker, Run, Status, Tracker

__all__ = ["NoopRun", "NoopTracker", "Run", "Status", "Tracker", "build_tracker"]


def build_tracker(cfg: TrackingConfig) -> Tracker:
    """MLflow when tracking is enabled (imported lazily: it is slow to import)."""
    if not cfg.enabled:
        return NoopTracker()
    from pipeline.tracking._mlflow import MlflowTracker

    return MlflowTracker(cfg.uri, cfg.experiment, cfg.artifact_location)
