"""Artifact locations relative to the tracking folder, so ``mlruns/`` can be moved or copied.

MLflow stores every experiment's and run's artifact location as an absolute path (a relative one
is resolved against the working directory when the experiment is created), so a moved ``mlruns/``
keeps its runs but loses every artifact. When the artifacts live beside a local tracking store
(``sqlite:///mlruns/mlflow.db`` and ``mlruns/artifacts``, the default) taskpack stores the
location as ``taskpack-mlruns:artifacts``: an MLflow artifact repository (registered here and,
for ``mlflow ui``, through the ``mlflow.artifact_repository`` entry point in pyproject.toml)
resolves it against the folder of the tracking store in use at read time.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlsplit

from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository

__all__ = ["SCHEME", "RelativeArtifactRepository", "register", "relative_location",
           "tracking_folder"]

SCHEME = "taskpack-mlruns"


def tracking_folder(uri: str | None) -> Path | None:
    """The local folder a tracking URI keeps its data in: the sqlite file's folder, or the
    folder of a file store; None for a server or a remote database."""
    if not uri:
        return None
    if uri.startswith("sqlite:///"):
        # sqlite:///rel/mlflow.db is relative to the working directory, sqlite:////abs absolute
        db = unquote(uri.removeprefix("sqlite:///").split("?", 1)[0])
        return Path(db).expanduser().resolve().parent
    if uri.startswith("file:"):
        return Path(unquote(urlsplit(uri).path)).resolve()
    if "://" not in uri:
        return Path(uri).expanduser().resolve()
    return None


def relative_location(uri: str, artifact_location: str) -> str | None:
    """``taskpack-mlruns:<path>`` when ``artifact_location`` is a local folder inside the
    tracking store's folder; else None (the location is used as it is)."""
    base = tracking_folder(uri)
    if base is None or "://" in artifact_location:
        return None
    target = Path(artifact_location).expanduser().resolve()
    try:
        rel = target.relative_to(base)
    except ValueError:
        return None
    return f"{SCHEME}:{rel.as_posix()}" if rel.parts else f"{SCHEME}:."


def _current_tracking_uri(given: str | None) -> str | None:
    if given:
        return given
    # ``mlflow ui`` / ``mlflow server`` pass their backend store to workers through this
    env = os.environ.get("_MLFLOW_SERVER_FILE_STORE") or os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    import mlflow

    return mlflow.get_tracking_uri()


class RelativeArtifactRepository(LocalArtifactRepository):
    """``taskpack-mlruns:artifacts/1/<run>/artifacts`` -> a local folder under the folder of the
    tracking store (``mlruns/``) this process reads."""

    def __init__(self, artifact_uri: str, tracking_uri: str | None = None,
                 registry_uri: str | None = None) -> None:
        base = tracking_folder(_current_tracking_uri(tracking_uri))
        if base is None:
            raise ValueError(f"{artifact_uri}: artifact locations relative to the tracking "
                             "folder need a local tracking store (sqlite:///... or a folder), "
                             f"got {tracking_uri!r}")
        rel = artifact_uri.removeprefix(f"{SCHEME}:").lstrip("/")
        if ".." in Path(rel).parts:
            raise ValueError(f"{artifact_uri}: must not leave the tracking folder")
        local = (base / rel).as_uri()
        super().__init__(local, tracking_uri, registry_uri)


def register() -> None:
    """Make the scheme known to this process's MLflow (idempotent)."""
    from mlflow.store.artifact.artifact_repository_registry import (
        _artifact_repository_registry as registry,
    )

    registry.register(SCHEME, RelativeArtifactRepository)
