"""Store format v2: the ``base`` section (a fixed signed-constant backbone); v1 still reads."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main
from pipeline.errors import StoreError
from pipeline.evaluation import committed_snapshot, snapshot_logits
from pipeline.store import FORMAT_VERSION, LayerCommit, PackedStore, TaskCommit, format_report
from pipeline.store._format import build_file, parse_file
from tests.pipeline_tests.fixtures.make_v1_store import HERE, model_and_probe
from tests.pipeline_tests.store_damage import rewrite_sections

SIGNS = torch.tensor([i % 3 == 0 for i in range(32)]).reshape(4, 8)  # True = negative
BASE = {"fc": torch.where(SIGNS, -0.5, 0.5), "out": torch.full((2, 4), 0.25)}


def _version(path: Path) -> int:
    return struct.unpack_from("<I", path.read_bytes(), 8)[0]


@pytest.fixture
def based(tmp_path: Path) -> PackedStore:
    store = PackedStore.create(tmp_path / "b.tpk", {"fc": (4, 8), "out": (2, 4)}, "base-test")
    store.set_base(BASE)
    return store


def _mask_only(store: PackedStore, t: int, mask_fc: torch.Tensor) -> None:
    """A task that only masks the base: every position it reads is shared, none own."""
    layers = {"fc": LayerCommit(mask_fc, torch.zeros(4, 8, dtype=torch.bool), 32,
                                torch.zeros(4, 8)),
              "out": LayerCommit(torch.ones(2, 4, dtype=torch.bool),
                                 torch.zeros(2, 4, dtype=torch.bool), 32, torch.zeros(2, 4))}
    store.commit(TaskCommit(t, layers, {f"heads.{t}.weight": torch.ones(3, 2)}))


# ----------------------------------------------------------------------------- the base section
def test_base_section_bytes_by_hand(based: PackedStore) -> None:
    # fc: scale 0.5 then 32 sign bits, little-endian bit order: positions 0,3,6,... negative
    # -> bits 0,3,6 of byte 0 = 0x49; byte 1: positions 9,12,15 -> bits 1,4,7 = 0x92; ...
    # out: scale 0.25, all positive
    want = (struct.pack("<f", 0.5) + bytes([0x49, 0x92, 0x24, 0x49])
            + struct.pack("<f", 0.25) + bytes([0x00]))
    assert based.section_bytes("base") == want
    assert based.section_names() == ["model", "base"]
    assert _version(based.path) == FORMAT_VERSION == 2
    again = PackedStore.open(based.path)
    assert again.has_base
    base = again.base_weights()
    assert base is not None and all(torch.equal(base[n], BASE[n]) for n in BASE)


def test_mask_only_tasks_read_the_base_and_own_nothing(based: PackedStore) -> None:
    m0 = torch.zeros(4, 8, dtype=torch.bool)
    m0[:, :3] = True
    m1 = torch.zeros(4, 8, dtype=torch.bool)
    m1[1:, 2:] = True
    _mask_only(based, 0, m0)
    _mask_only(based, 1, m1)
    assert based.union_mask(-1)["fc"].all()  # every position holds the base
    assert torch.equal(based.used_bits()["fc"], torch.ones(4, 8, dtype=torch.int32))
    for t, m in enumerate((m0, m1)):
        w = based.materialize(t)
        assert torch.equal(w["fc"], torch.where(m, BASE["fc"], 0.0))
        assert torch.equal(w["out"], BASE["out"])
        assert torch.equal(based.task_masks(t)["fc"], m)
    report = based.report()
    for task in report.tasks:
        assert task.own == 0 and task.bytes["codes"] == 0 and task.bytes["codebooks"] == 0
        assert task.bytes["tensors"] == 3 * 2 * 4  # the head
    assert report.bytes["base"] == 4 + 4 + 4 + 1
    assert sum(report.bytes.values()) == based.path.stat().st_size
    assert "base 13 B (a fixed signed-constant backbone" in format_report(report)
    reopened = PackedStore.open(based.path)
    assert all(torch.equal(reopened.materialize(1)[k], v)
               for k, v in based.materialize(1).items())


def test_own_codes_on_top_of_the_base_use_the_bits_it_leaves(based: PackedStore) -> None:
    own = torch.zeros(4, 8, dtype=torch.bool)
    own[0, 0] = True
    values = torch.zeros(4, 8)
    values[0, 0] = 2.0
    full = {"out": LayerCommit(torch.ones(2, 4, dtype=torch.bool),
                               torch.zeros(2, 4, dtype=torch.bool), 32, torch.zeros(2, 4))}
    with pytest.raises(StoreError, match="needs 32 free bits of the 32-bit budget"):
        based.commit(TaskCommit(0, {"fc": LayerCommit(own, own, 32, values)} | full, {}))
    based.commit(TaskCommit(0, {"fc": LayerCommit(own, own, 16, values)} | full, {}))
    assert based.materialize(0)["fc"][0, 0] == 2.0
    assert based.used_bits()["fc"][0, 0] == 17


def test_set_base_refuses_what_it_cannot_store(tmp_path: Path, based: PackedStore) -> None:
    fresh = PackedStore.create(tmp_path / "c.tpk", {"fc": (4, 8), "out": (2, 4)}, "x")
    with pytest.raises(StoreError, match="must be a signed constant"):
        fresh.set_base({"fc": torch.randn(4, 8), "out": BASE["out"]})
    with pytest.raises(StoreError, match="must be a signed constant"):
        fresh.set_base({"fc": torch.zeros(4, 8), "out": BASE["out"]})
    with pytest.raises(StoreError, match="must give every store layer, found missing"):
        fresh.set_base({"fc": BASE["fc"]})
    with pytest.raises(StoreError, match="no base and no tasks, found a base"):
        based.set_base(BASE)
    own = torch.ones(2, 4, dtype=torch.bool)
    fresh.commit(TaskCommit(0, {"fc": LayerCommit(torch.zeros(4, 8, dtype=torch.bool),
                                                  torch.zeros(4, 8, dtype=torch.bool), 32,
                                                  torch.zeros(4, 8)),
                                "out": LayerCommit(own, own, 32, torch.ones(2, 4))}, {}))
    with pytest.raises(StoreError, match="no base and no tasks, found tasks"):
        fresh.set_base(BASE)


def test_damaged_base_is_a_store_error(based: PackedStore) -> None:
    rewrite_sections(based.path, {"base": lambda b: struct.pack("<f", float("nan")) + b[4:]})
    with pytest.raises(StoreError, match="base layer 'fc': the scale must be finite and > 0"):
        PackedStore.open(based.path)
    rewrite_sections(based.path, {"base": lambda b: b[:-1]})
    with pytest.raises(StoreError, match="section 'base' must hold 13 bytes"):
        PackedStore.open(based.path)


def test_a_base_in_a_version_1_file_is_refused(based: PackedStore) -> None:
    data = bytearray(based.path.read_bytes())
    data[8:12] = struct.pack("<I", 1)
    data[36:40] = struct.pack("<I", zlib.crc32(bytes(data[:36])) & 0xFFFFFFFF)
    based.path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="'base' section needs store format version 2"):
        PackedStore.open(based.path)


def test_inspect_shows_the_base_line(based: PackedStore,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    _mask_only(based, 0, torch.ones(4, 8, dtype=torch.bool))
    assert main(["inspect", str(based.path)]) == 0
    assert "base 13 B" in capsys.readouterr().out
    assert main(["inspect", str(based.path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["bytes"]["base"] == 13 and data["tasks"][0]["bytes"]["codes"] == 0


# ------------------------------------------------------------------------- version-1 stores
V1 = HERE / "store_v1.tpk"


def _expected() -> dict[str, np.ndarray]:
    with np.load(HERE / "store_v1_expected.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _check_v1_tasks(store: PackedStore, expected: dict[str, np.ndarray]) -> None:
    model, probe = model_and_probe()
    for _ in range(2):
        model.add_task(3)
    for t in range(2):
        snap = committed_snapshot(store, t)
        for k, v in snap.items():
            want = expected[f"task{t}/{k}"]
            assert v.numpy().dtype == want.dtype and v.numpy().tobytes() == want.tobytes(), k
        # The weights above are bit-identical on any machine; the logits were written on another
        # CPU, and a matmul's summation order follows the CPU's vector width (AVX2 / AVX-512), so
        # the last bit of a logit may differ from one machine to the next (seen: one ulp).
        logits = snapshot_logits(model, snap, t, probe, 5)
        np.testing.assert_allclose(logits.numpy(), expected[f"logits{t}"], rtol=1e-6, atol=1e-6)


def test_a_version_1_store_loads_and_evaluates_as_it_did() -> None:
    assert _version(V1) == 1
    store = PackedStore.open(V1)
    assert store.num_tasks == 2 and not store.has_base
    assert store.report().bytes["base"] == 0
    assert sum(store.report().bytes.values()) == V1.stat().st_size
    _check_v1_tasks(store, _expected())


def test_a_commit_to_a_version_1_store_writes_version_2(tmp_path: Path) -> None:
    path = tmp_path / "v1.tpk"
    shutil.copy(V1, path)
    store = PackedStore.open(path)
    shapes = store.layers
    store.commit(TaskCommit(2, {n: LayerCommit(torch.zeros(s, dtype=torch.bool),
                                               torch.zeros(s, dtype=torch.bool), 32,
                                               torch.zeros(s)) for n, s in shapes.items()}, {}))
    assert _version(path) == 2
    old, new = parse_file(V1.read_bytes(), "v1"), parse_file(path.read_bytes(), "v2")
    assert new[:len(old)] == old  # earlier sections: same offsets, same bytes
    _check_v1_tasks(PackedStore.open(path), _expected())


def test_build_file_writes_the_current_version() -> None:
    data, _ = build_file(b"", [], [("model", b"{}")])
    assert struct.unpack_from("<I", data, 8)[0] == FORMAT_VERSION
