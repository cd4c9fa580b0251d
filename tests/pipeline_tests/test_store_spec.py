"""The store's ``spec`` section: written by create, kept by commits, checked when read."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.errors import StoreError
from pipeline.recipe import load_recipe, recipe_to_dict
from pipeline.store import LayerCommit, PackedStore, TaskCommit
from pipeline.store._format import build_file, canonical_json
from pipeline.store_spec import SPEC_VERSION, _pack, _unpack, resolve_spec

REPO = Path(__file__).resolve().parents[2]


def _spec(perm: list[int] | None = None) -> dict:
    recipe = load_recipe(REPO / "recipes/quickstart.yaml")
    steps = [{"op": "scale", "divide_by": 255.0}]
    if perm is not None:
        steps.append({"op": "permute_pixels", "permutation": perm})
    return {"spec_version": SPEC_VERSION, "recipe": recipe_to_dict(recipe),
            "input_shape": [1, 28, 28],
            "tasks": [{"name": "t0", "num_classes": 10, "preprocess": _pack({"steps": steps})}]}


def _commit(store: PackedStore) -> None:
    w = torch.arange(1, 33, dtype=torch.float32).reshape(4, 8)
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[0] = True
    store.commit(TaskCommit(0, {"fc": LayerCommit(mask, mask.clone(), 32, w)}, {}))


def test_spec_is_written_at_create_and_kept_by_commits(tmp_path: Path) -> None:
    spec = {"spec_version": 1, "note": "x", "nested": {"a": [1, 2]}}
    store = PackedStore.create(tmp_path / "s.tpk", {"fc": (4, 8)}, "fp", spec=spec)
    before = store.section_bytes("spec")
    _commit(store)
    again = PackedStore.open(store.path)
    assert again.section_names() == ["model", "spec", *[f"task/0/{p}" for p in
                                                         ("meta", "masks", "codes", "codebooks",
                                                          "tensors")]]
    assert again.spec() == spec and again.section_bytes("spec") == before
    assert again.num_tasks == 1
    # counted as store-level metadata: the components still add up to the file size
    report = again.report()
    assert sum(report.bytes.values()) == store.path.stat().st_size


def test_a_store_without_spec_reads_as_before(tmp_path: Path) -> None:
    store = PackedStore.create(tmp_path / "s.tpk", {"fc": (4, 8)}, "fp")
    _commit(store)
    assert PackedStore.open(store.path).spec() is None
    assert store.section_names()[0] == "model" and "spec" not in store.section_names()


@pytest.mark.parametrize("bad", [[1, 2], "text"])
def test_create_refuses_a_spec_that_is_not_an_object(tmp_path: Path, bad: object) -> None:
    with pytest.raises(StoreError, match="spec must be a JSON object"):
        PackedStore.create(tmp_path / "s.tpk", {"fc": (4, 8)}, "fp", spec=bad)  # type: ignore[arg-type]


def test_a_spec_section_out_of_place_is_refused(tmp_path: Path) -> None:
    model = {"format": "taskpack-store", "fingerprint": "fp", "bit_budget": 32,
             "layers": [["fc", [4, 8]]]}
    data, _ = build_file(b"", [], [("model", canonical_json(model)), ("extra", b"{}"),
                                   ("spec", b"{}")])
    path = tmp_path / "s.tpk"
    path.write_bytes(data)
    with pytest.raises(StoreError, match="sections must be"):
        PackedStore.open(path)


def test_permutations_pack_exactly_and_bad_ones_are_refused() -> None:
    perm = np.random.default_rng(0).permutation(784).tolist()
    packed = _pack({"steps": [{"op": "permute_pixels", "permutation": perm}], "classes": [3]})
    assert packed["steps"][0]["permutation"]["dtype"] == "<u2"
    assert _unpack(packed) == {"steps": [{"op": "permute_pixels", "permutation": perm}],
                               "classes": [3]}
    twice = _pack({"steps": [{"op": "permute_pixels", "permutation": [0, 0, 1]}]})
    with pytest.raises(ValueError, match="each index once"):
        _unpack(twice)


def test_resolve_spec_reads_the_store_without_a_recipe_or_data(tmp_path: Path) -> None:
    perm = list(range(784))[::-1]
    path = tmp_path / "s.tpk"
    PackedStore.create(path, {"fc": (4, 8)}, "fp", spec=_spec(perm))
    spec = resolve_spec(path, None)
    assert spec.source == "store spec" and spec.input_shape == (1, 28, 28)
    assert spec.recipe.name == "quickstart"
    assert spec.tasks[0].preprocess["steps"][1]["permutation"] == perm


@pytest.mark.parametrize(("change", "match"), [
    ({"spec_version": 99}, "spec_version 1"),
    ({"recipe": {"name": "x", "unknown_key": 1}}, "unknown_key"),
    ({"input_shape": [1, 28]}, r"\(C, H, W\) input shape"),
    ({"tasks": [{"name": "t"}]}, "must hold recipe, input_shape and tasks"),
])
def test_a_damaged_spec_is_one_line_and_exit_2(tmp_path: Path, change: dict, match: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.tpk"
    PackedStore.create(path, {"fc": (4, 8)}, "fp", spec=_spec() | change)
    with pytest.raises(StoreError, match=match):
        resolve_spec(path, None)
    assert main(["export", str(path), "--all-tasks", "--target", "host", "--no-track"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_export_refuses_a_batch_size_below_one(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.tpk"
    PackedStore.create(path, {"fc": (4, 8)}, "fp", spec=_spec())
    assert main(["export", str(path), "--all-tasks", "--target", "host", "--batch", "0",
                 "--no-track"]) == 2
    assert "--batch must be between 1 and 4096, found [0]" in capsys.readouterr().err
