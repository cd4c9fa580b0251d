"""Stores whose checksums pass but whose decoded content is impossible are a StoreError (one
line, exit 2 in `taskpack inspect` / `export`), never a different model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from pipeline.cli import main
from pipeline.errors import StoreError
from pipeline.store import LayerCommit, PackedStore, TaskCommit
from tests.pipeline_tests.store_damage import CONTENT_DAMAGE, rewrite_sections, small_store


def test_the_undamaged_store_reads_back(tmp_path: Path) -> None:
    store = PackedStore.open(small_store(tmp_path / "s.tpk"))
    w = store.materialize(0)
    assert torch.equal(w["fc"][0], torch.tensor([0.5, -0.5, 0.5, 0.25, -0.5, 0.25, 0.25, 0.5]))
    assert torch.equal(w["out"][0], torch.tensor([1.0, -2.0, 3.0, -4.0]))


@pytest.mark.parametrize("name", sorted(CONTENT_DAMAGE))
def test_impossible_content_is_a_store_error(tmp_path: Path, name: str) -> None:
    patch, match = CONTENT_DAMAGE[name]
    path = small_store(tmp_path / "s.tpk")
    rewrite_sections(path, patch)
    with pytest.raises(StoreError, match=re.escape(match)):
        PackedStore.open(path)


@pytest.mark.parametrize("name", ["nan-codebook-entry", "code-past-codebook"])
@pytest.mark.parametrize("command", [["inspect"], ["export", "--task", "0", "--target", "host"]])
def test_inspect_and_export_print_one_line_and_exit_2(tmp_path: Path, name: str,
                                                      command: list[str],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    patch, match = CONTENT_DAMAGE[name]
    path = small_store(tmp_path / "s.tpk")
    rewrite_sections(path, patch)
    argv = [command[0], str(path), *command[1:]]
    if command[0] == "export":  # export reads the recipe beside the store, then the store
        (tmp_path / "recipe.yaml").write_text(
            "name: d\nbenchmark: {stream: split_mnist, tasks: 1}\ntracking: {enabled: false}\n")
        argv += ["--out", str(tmp_path / "x")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err


def test_a_non_finite_codebook_is_never_written(tmp_path: Path) -> None:
    store = PackedStore.create(tmp_path / "s.tpk", {"l": (2, 2)}, "fp")
    before = store.path.read_bytes()
    v = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    book = torch.tensor([1.0, 2.0, float("nan")])
    with pytest.raises(StoreError, match="finite entries"):
        store.commit(TaskCommit(0, {"l": LayerCommit(v != 0, v != 0, 2, v, book)}, {}))
    assert store.path.read_bytes() == before and store.num_tasks == 0
