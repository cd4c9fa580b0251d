"""Run folders: created with a marker, deleted by ``--fresh`` only when the marker says taskpack
created them, cleaned of the temp files a killed commit left behind.

``--fresh`` deletes a whole folder, so it must never delete what taskpack did not create: a run
folder is ``<output_dir>/<name>`` (the recipe allows no path separators or dots in names), it
must be a real folder, not a symbolic link, and it must hold the marker file written when it was
created. A folder without the marker that has content is left alone with a message saying why.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from pipeline._atomic import remove_stale_temp_files
from pipeline.errors import InputError, PipelineError
from pipeline.store import FORMAT_MAGIC

__all__ = ["MARKER", "prepare_run_dir"]

MARKER = ".taskpack-run"
_RUN_FILES = re.compile(r"state-[0-9]+\.npz|progress\.json|report\.html")  # written atomically
# everything a taskpack older than the marker put in a run folder (it always wrote recipe.yaml)
_LEGACY_FILES = re.compile(r"recipe\.yaml|store\.tpk|state-[0-9]+\.npz|progress\.json|"
                           r"results\.json|tasks\.csv|accuracy_matrix\.png|store_report\.txt|"
                           r"search|\..+\.tmp")


def prepare_run_dir(run_dir: Path, output_dir: Path, store_path: Path, fresh: bool) -> None:
    """Make ``run_dir`` ready for a run: with ``fresh`` delete the old one (and the store, when
    it lives elsewhere) first; create it with its marker; remove stale temp files of the store
    and of the run's own files."""
    if fresh:
        _delete_run_dir(run_dir, output_dir)
        _delete_store(store_path)
    try:  # the run and its search workers may start together: one of them creates it
        run_dir.mkdir(parents=True)
        created = True
    except FileExistsError:
        created = False
    if created:
        (run_dir / MARKER).write_text("a run folder created by taskpack: `taskpack run --fresh` "
                                      "may delete it\n")
    elif run_dir.is_dir() and not any(run_dir.iterdir()):
        (run_dir / MARKER).write_text("a run folder created by taskpack\n")
    remove_stale_temp_files(store_path.parent, lambda name: name == store_path.name)
    remove_stale_temp_files(run_dir, lambda name: _RUN_FILES.fullmatch(name) is not None)


def _delete_run_dir(run_dir: Path, output_dir: Path) -> None:
    refuse = f"refusing to delete run folder {run_dir}"
    if run_dir.is_symlink():
        raise InputError(f"{refuse}: it is a symbolic link, and --fresh never deletes outside "
                         "output_dir; remove the link yourself")
    if not run_dir.exists():
        return
    if run_dir.resolve().parent != output_dir.resolve():
        raise InputError(f"{refuse}: it is not inside output_dir {output_dir}")
    if not run_dir.is_dir():
        raise InputError(f"{refuse}: it is not a folder")
    marker = run_dir / MARKER
    if marker.is_symlink() or not marker.is_file():
        if not any(run_dir.iterdir()):
            return
        if not _made_before_the_marker(run_dir):
            raise InputError(f"{refuse}: it has content but no {MARKER} marker, so taskpack did "
                             "not create it; move or delete it yourself, or set name / "
                             "output_dir")
    try:
        shutil.rmtree(run_dir)  # never follows symbolic links inside the folder
    except OSError as exc:
        raise PipelineError(f"could not delete run folder {run_dir}: {exc}") from None


def _made_before_the_marker(run_dir: Path) -> bool:
    """A run folder of a taskpack older than the marker: its recipe.yaml and nothing but the
    files such a run writes (no symbolic links)."""
    entries = list(run_dir.iterdir())
    return (run_dir / "recipe.yaml").is_file() and all(
        not e.is_symlink() and _LEGACY_FILES.fullmatch(e.name) is not None for e in entries)


def _delete_store(store_path: Path) -> None:
    """A store outside the run folder (``store.path``): deleted only if it is a store file."""
    if not store_path.exists() and not store_path.is_symlink():
        return
    is_store = False
    if store_path.is_file() and not store_path.is_symlink():
        try:
            with open(store_path, "rb") as f:
                is_store = f.read(len(FORMAT_MAGIC)) == FORMAT_MAGIC
        except OSError:
            pass
    if not is_store:
        raise InputError(f"refusing to delete store.path {store_path}: it is not a taskpack "
                         "store file")
    store_path.unlink()
