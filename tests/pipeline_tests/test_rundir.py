"""Run folders: ``--fresh`` deletes only a marked folder inside output_dir, never through a
symbolic link; the temp files of a killed commit are removed when the next run starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import InputError
from pipeline.rundir import MARKER, prepare_run_dir
from pipeline.store import PackedStore


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names no process now
    return proc.pid


def test_fresh_deletes_a_marked_run_folder_and_marks_the_new_one(tmp_path: Path) -> None:
    run_dir = tmp_path / "out" / "r"
    prepare_run_dir(run_dir, tmp_path / "out", run_dir / "store.tpk", fresh=True)
    assert (run_dir / MARKER).is_file()
    (run_dir / "results.json").write_text("{}")
    prepare_run_dir(run_dir, tmp_path / "out", run_dir / "store.tpk", fresh=True)
    assert sorted(p.name for p in run_dir.iterdir()) == [MARKER]


def test_fresh_refuses_a_folder_without_the_marker(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    (run_dir / "thesis.tex").write_text("years of work")
    with pytest.raises(InputError, match=f"has content but no {MARKER} marker"):
        prepare_run_dir(run_dir, tmp_path, run_dir / "store.tpk", fresh=True)
    assert (run_dir / "thesis.tex").read_text() == "years of work"
    # nor does a plain run mark it: it still is not taskpack's to delete
    prepare_run_dir(run_dir, tmp_path, run_dir / "store.tpk", fresh=False)
    assert not (run_dir / MARKER).exists()


def test_a_run_folder_of_a_taskpack_older_than_the_marker_is_recognised(tmp_path: Path) -> None:
    # `make demo` runs with --fresh; a machine with an older run must not need a manual rm
    run_dir = tmp_path / "r"
    (run_dir / "search").mkdir(parents=True)
    for name in ("recipe.yaml", "store.tpk", "state-2.npz", "progress.json", "results.json"):
        (run_dir / name).write_text("x")
    prepare_run_dir(run_dir, tmp_path, run_dir / "store.tpk", fresh=True)
    assert sorted(p.name for p in run_dir.iterdir()) == [MARKER]
    # one foreign file, or no recipe.yaml, and it is not taskpack's
    for foreign in (["recipe.yaml", "notes.txt"], ["results.json"]):
        run_dir.joinpath(MARKER).unlink()
        for name in foreign:
            (run_dir / name).write_text("x")
        with pytest.raises(InputError, match="no .taskpack-run marker"):
            prepare_run_dir(run_dir, tmp_path, run_dir / "store.tpk", fresh=True)
        for p in run_dir.iterdir():
            p.unlink()
        (run_dir / MARKER).write_text("")


def test_an_empty_folder_is_adopted(tmp_path: Path) -> None:
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    prepare_run_dir(run_dir, tmp_path, run_dir / "store.tpk", fresh=True)
    assert (run_dir / MARKER).is_file()


def test_fresh_never_follows_a_symlinked_run_folder(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / MARKER).write_text("")
    (elsewhere / "data.bin").write_text("keep")
    out = tmp_path / "out"
    out.mkdir()
    (out / "r").symlink_to(elsewhere)
    with pytest.raises(InputError, match="it is a symbolic link"):
        prepare_run_dir(out / "r", out, out / "r" / "store.tpk", fresh=True)
    assert (elsewhere / "data.bin").read_text() == "keep"


def test_fresh_deletes_links_inside_the_folder_not_their_targets(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "data.bin").write_text("keep")
    run_dir = tmp_path / "out" / "r"
    prepare_run_dir(run_dir, tmp_path / "out", run_dir / "store.tpk", fresh=False)
    (run_dir / "link").symlink_to(elsewhere)
    prepare_run_dir(run_dir, tmp_path / "out", run_dir / "store.tpk", fresh=True)
    assert not (run_dir / "link").exists()
    assert (elsewhere / "data.bin").read_text() == "keep"


def test_fresh_deletes_an_outside_store_only_if_it_is_a_store(tmp_path: Path) -> None:
    run_dir = tmp_path / "out" / "r"
    precious = tmp_path / "precious.txt"
    precious.write_text("not a store")
    with pytest.raises(InputError, match="is not a taskpack store file"):
        prepare_run_dir(run_dir, tmp_path / "out", precious, fresh=True)
    assert precious.read_text() == "not a store"
    store = tmp_path / "s.tpk"
    PackedStore.create(store, {"l": (2, 2)}, "fp")
    prepare_run_dir(run_dir, tmp_path / "out", store, fresh=True)
    assert not store.exists()


def test_stale_temp_files_of_a_killed_commit_are_removed_on_the_next_start(
        tmp_path: Path) -> None:
    run_dir = tmp_path / "out" / "r"
    prepare_run_dir(run_dir, tmp_path / "out", run_dir / "store.tpk", fresh=False)
    dead, alive = _dead_pid(), os.getpid()
    stale = [f".store.tpk.{dead}.0123abcd.tmp", f".state-2.npz.{dead}.deadbeef.tmp",
             f".progress.json.{dead}.00000000.tmp"]
    kept = [f".store.tpk.{alive}.0123abcd.tmp",  # a commit in flight in a live process
            f".notes.txt.{dead}.0123abcd.tmp",  # not a file the run writes
            ".store.tpk.tmp", "store.tpk.123.0123abcd.tmp", "notes.txt"]
    for name in stale + kept:
        (run_dir / name).write_bytes(b"x" * 64)
    prepare_run_dir(run_dir, tmp_path / "out", run_dir / "store.tpk", fresh=False)
    left = {p.name for p in run_dir.iterdir()}
    assert left == {MARKER, *kept}


def test_a_worker_creating_the_folder_at_the_same_moment_is_no_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `taskpack run` and `taskpack search --worker` start together: the other process creates
    # the folder between this one's look and its mkdir (was a FileExistsError traceback)
    run_dir = tmp_path / "r"
    real_mkdir = Path.mkdir

    def other_process_first(self: Path, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        if self == run_dir and not run_dir.exists():
            real_mkdir(run_dir)
            (run_dir / MARKER).write_text("made by the other process\n")
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", other_process_first)
    prepare_run_dir(run_dir, tmp_path, run_dir / "store.tpk", fresh=False)
    assert (run_dir / MARKER).read_text() == "made by the other process\n"
