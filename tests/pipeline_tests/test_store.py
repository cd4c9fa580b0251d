"""Packed weight store: hand-made examples, zero forgetting, budget, integrity, report, speed."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

import pytest
import torch

from pipeline.errors import InputError, StoreError
from pipeline.store import (
    SLEEP_ENV,
    LayerCommit,
    PackedStore,
    TaskCommit,
    fit_codebook,
    format_report,
)

CB0 = torch.tensor([-1.5, -1.0, -0.5, 0.25, 0.5, 1.0, 2.0, 4.0])  # 3-bit codebook of task 0
CB1 = torch.tensor([-0.25, 0.75])  # task 1, 2-bit codes (k=2 < 4 is allowed)


def flat_bool(n: int, idx: list[int], shape: tuple[int, ...] = (4, 8)) -> torch.Tensor:
    t = torch.zeros(n, dtype=torch.bool)
    t[idx] = True
    return t.reshape(shape)


def dense(values: dict[int, float], shape: tuple[int, ...] = (4, 8)) -> torch.Tensor:
    t = torch.zeros(shape).reshape(-1)
    for i, v in values.items():
        t[i] = v
    return t.reshape(shape)


T0_OWN = {0: 0.25, 1: 4.0, 2: -1.5, 5: 1.0, 8: -1.0, 13: 2.0, 31: -0.5}  # codes 3,7,0,5,1,6,2
T1_OWN = {1: 0.75, 3: -0.25, 4: 0.75, 20: -0.25}  # 1 is a split of task 0's position
T1_SHARED = [0, 5, 13]


def commit_handmade(store: PackedStore) -> None:
    store.commit(
        TaskCommit(
            0,
            {
                "fc": LayerCommit(
                    flat_bool(32, list(T0_OWN)), flat_bool(32, list(T0_OWN)), 3, dense(T0_OWN), CB0
                )
            },
            {"head.bias": torch.tensor([1.0, -2.0], dtype=torch.float16)},
            {"name": "t0", "acc": 0.5},
        )
    )
    own1 = flat_bool(32, list(T1_OWN))
    store.commit(
        TaskCommit(
            1,
            {"fc": LayerCommit(own1 | flat_bool(32, T1_SHARED), own1, 2, dense(T1_OWN), CB1)},
            {"head.bias": torch.tensor([7, 8], dtype=torch.int64)},
        )
    )


@pytest.fixture
def handmade(tmp_path: Path) -> PackedStore:
    store = PackedStore.create(tmp_path / "s.tpk", {"fc": (4, 8)}, "mlp-4x8")
    commit_handmade(store)
    return store


# ------------------------------------------------------------------------- hand-made 4x8 example
def test_handmade_exact_code_bytes(handmade: PackedStore) -> None:
    # task 0: 3-bit codes 3,7,0,5,1,6,2 LSB first -> 0x3B 0x1A 0x0B
    assert handmade.section_bytes("task/0/codes") == bytes([0x3B, 0x1A, 0x0B])
    # task 1: 2-bit codes at positions 1,3,4,20 = 1,0,1,0 -> 0b00010001
    assert handmade.section_bytes("task/1/codes") == bytes([0x11])
    assert handmade.section_bytes("task/0/codebooks") == CB0.numpy().astype("<f4").tobytes()
    assert handmade.section_bytes("task/1/codebooks") == CB1.numpy().astype("<f4").tobytes()
    assert handmade.section_bytes("task/1/tensors") == struct.pack("<qq", 7, 8)


def test_handmade_materialize_exact(handmade: PackedStore) -> None:
    m0 = handmade.materialize(0)
    assert torch.equal(m0["fc"], dense(T0_OWN))
    assert torch.equal(m0["head.bias"], torch.tensor([1.0, -2.0], dtype=torch.float16))
    m1 = handmade.materialize(1)
    # shared positions read task 0's values; position 1 reads task 1's own split code
    assert torch.equal(m1["fc"], dense({0: 0.25, 5: 1.0, 13: 2.0, **T1_OWN}))
    assert torch.equal(m1["head.bias"], torch.tensor([7, 8]))
    assert handmade.task_meta(0) == {"name": "t0", "acc": 0.5}


def test_handmade_state_views(handmade: PackedStore) -> None:
    used = handmade.used_bits()["fc"].reshape(-1)
    expect = torch.zeros(32, dtype=torch.int32)
    expect[list(T0_OWN)] = 3
    expect[list(T1_OWN)] += 2
    assert torch.equal(used, expect)  # position 1 holds 3 + 2 bits
    assert torch.equal(handmade.union_mask()["fc"], expect.reshape(4, 8) > 0)
    assert torch.equal(handmade.union_mask(0)["fc"], flat_bool(32, list(T0_OWN)))
    assert not handmade.union_mask(-1)["fc"].any()
    assert torch.equal(handmade.current_values()["fc"], dense({**T0_OWN, **T1_OWN}))


def test_shared_resolves_to_latest_earlier_code(handmade: PackedStore) -> None:
    handmade.commit(
        TaskCommit(
            2,
            {"fc": LayerCommit(flat_bool(32, [1, 2]), flat_bool(32, []), 1, torch.zeros(4, 8))},
            {},
        )
    )
    assert torch.equal(handmade.materialize(2)["fc"], dense({1: 0.75, 2: -1.5}))
    assert handmade.materialize(0)["fc"][0, 1] == 4.0  # task 0 still reads its own code


def test_reopen_gives_same_state(handmade: PackedStore) -> None:
    again = PackedStore.open(handmade.path, expect_fingerprint="mlp-4x8")
    assert again.num_tasks == 2 and again.layers == {"fc": (4, 8)} and again.bit_budget == 32
    for t in range(2):
        a, b = handmade.materialize(t), again.materialize(t)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(again.used_bits()["fc"], handmade.used_bits()["fc"])


# ------------------------------------------------------------------------ zero forgetting (random)
LAYERS = {"conv": (8, 3, 3, 3), "fc": (64, 216), "empty": (0, 5)}
BITS = [4, 32, 16, 2, 8, 3]


def random_commit(store: PackedStore, t: int, g: torch.Generator) -> TaskCommit:
    """A task with ~10% fresh own codes, ~40% sharing and some splits where bits are free."""
    union, used = store.union_mask(), store.used_bits()
    layers = {}
    for name, shape in LAYERS.items():
        bits = BITS[t % len(BITS)]
        fresh = (torch.rand(shape, generator=g) < 0.1) & ~union[name]
        free = union[name] & (store.bit_budget - used[name] >= bits)
        split = free & (torch.rand(shape, generator=g) < 0.1)
        shared = union[name] & ~split & (torch.rand(shape, generator=g) < 0.4)
        own = fresh | split
        raw = torch.randn(shape, generator=g)
        codebook = None
        if bits == 16:
            raw = raw.half().float()  # fp16 storage: values must be fp16-exact
        elif bits < 32:
            codebook, codes = fit_codebook(raw[own], bits)
            raw[own] = codebook[codes]
        layers[name] = LayerCommit(own | shared, own, bits, raw, codebook)
    tensors = {"head.w": torch.randn(10, 4, generator=g), "bn.n": torch.tensor(t)}
    return TaskCommit(t, layers, tensors, {"task_name": f"t{t}"})


def test_zero_forgetting_bit_exact(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    store = PackedStore.create(tmp_path / "z.tpk", LAYERS, "fp")
    snapshots, sections = [], []
    for t in range(6):
        c = random_commit(store, t, g)
        store.commit(c)
        got = store.materialize(t)
        for name, lc in c.layers.items():  # the store returns exactly what the task trained with
            want = torch.where(lc.own, lc.values, torch.where(lc.mask, got[name], 0.0))
            assert torch.equal(got[name], want)
        snapshots.append(got)
        sections.append({n: store.section_bytes(n) for n in store.section_names()})
    assert sum(int(x.own.sum()) for x in c.layers.values()) > 0
    assert store.report().tasks[-1].layers[0].split > 0  # splits were exercised
    reopened = PackedStore.open(tmp_path / "z.tpk")
    for t, snap in enumerate(snapshots):
        for s in (store, reopened):
            now = s.materialize(t)
            assert now.keys() == snap.keys()
            assert all(torch.equal(now[k], snap[k]) for k in snap), t
        for name, payload in sections[t].items():  # earlier sections byte-identical, same place
            assert reopened.section_bytes(name) == payload
    assert (store.used_bits()["fc"] <= 32).all()


# ------------------------------------------------------------------------------------- budget
def small_store(tmp_path: Path, budget: int = 8) -> PackedStore:
    return PackedStore.create(tmp_path / "b.tpk", {"w": (2, 2)}, "fp", bit_budget=budget)


def own_at(t: int, idx: list[int], bits: int, value: float, shared: tuple = ()) -> TaskCommit:
    own = flat_bool(4, idx, (2, 2))
    values = torch.full((2, 2), value)
    cb = None if bits in (16, 32) else torch.tensor([value])
    return TaskCommit(
        t, {"w": LayerCommit(own | flat_bool(4, list(shared), (2, 2)), own, bits, values, cb)}, {}
    )


def test_budget_split_then_full(tmp_path: Path) -> None:
    s = small_store(tmp_path)
    s.commit(own_at(0, [0], 4, 1.0))
    s.commit(own_at(1, [0], 4, 2.0))  # split: 4 + 4 bits of 8
    assert s.used_bits()["w"].reshape(-1).tolist() == [8, 0, 0, 0]
    before = s.path.read_bytes()
    with pytest.raises(StoreError, match=r"needs 1 free bits of the 8-bit budget, found 1 own"):
        s.commit(own_at(2, [0], 1, 3.0))
    assert s.path.read_bytes() == before and s.num_tasks == 2  # failed commit changed nothing
    s.commit(own_at(2, [1], 8, 5.0, shared=(0,)))  # shared at 0 reads task 1's code
    assert torch.equal(s.materialize(2)["w"], dense({0: 2.0, 1: 5.0}, (2, 2)))
    assert torch.equal(s.materialize(0)["w"], dense({0: 1.0}, (2, 2)))
    with pytest.raises(StoreError, match=r"bits must be one of .* and <= the budget 8, found 16"):
        s.commit(own_at(3, [2], 16, 1.0))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: own_at(1, [0], 4, 1.0), "the next task to commit must be 0, found 1"),
        (lambda: TaskCommit(0, {}, {}), r"must give every store layer, found missing \['w'\]"),
        (lambda: own_at(0, [], 4, 1.0, shared=(2,)), r"shared positions must hold an earlier"),
        (
            lambda: TaskCommit(
                0,
                {
                    "w": LayerCommit(
                        torch.zeros(2, 2, dtype=torch.bool),
                        torch.ones(2, 2, dtype=torch.bool),
                        4,
                        torch.zeros(2, 2),
                        torch.zeros(1),
                    )
                },
                {},
            ),
            "own must be a subset of mask, found 4",
        ),
        (
            lambda: TaskCommit(
                0, {"w": LayerCommit(torch.ones(2, 2), torch.ones(2, 2), 4, torch.zeros(2, 2))}, {}
            ),
            r"mask must be a bool tensor of shape \(2, 2\)",
        ),
        (
            lambda: TaskCommit(
                0,
                {
                    "w": LayerCommit(
                        torch.ones(2, 2, dtype=torch.bool),
                        torch.ones(2, 2, dtype=torch.bool),
                        2,
                        torch.tensor([[1.0, 2.0], [1.0, 9.0]]),
                        torch.tensor([1.0, 2.0]),
                    )
                },
                {},
            ),
            r"every own value must be an entry of the codebook, found 1 .*9\.0",
        ),
        (
            lambda: own_at(0, [0], 1, 0.0).__class__(
                0,
                {
                    "w": LayerCommit(
                        flat_bool(4, [0], (2, 2)), flat_bool(4, [0], (2, 2)), 4, torch.zeros(2, 2)
                    )
                },
                {},
            ),
            "bits=4 needs a codebook",
        ),
        (
            lambda: TaskCommit(
                0,
                {
                    "w": LayerCommit(
                        flat_bool(4, [0], (2, 2)),
                        flat_bool(4, [0], (2, 2)),
                        8,
                        torch.zeros(2, 2),
                        torch.zeros(300),
                    )
                },
                {},
            ),
            r"codebook must hold 1..256 finite entries, found 300",
        ),
        (
            lambda: TaskCommit(
                0,
                {
                    "w": LayerCommit(
                        flat_bool(4, [0], (2, 2)),
                        flat_bool(4, [0], (2, 2)),
                        16,
                        torch.full((2, 2), 0.1),
                    )
                },
                {},
            ),
            "exactly representable in fp16",
        ),
        (
            lambda: TaskCommit(0, own_at(0, [0], 4, 1.0).layers, {"w": torch.zeros(1)}),
            "names must be non-empty and differ from layer names",
        ),
        (
            lambda: TaskCommit(
                0, own_at(0, [0], 4, 1.0).layers, {"x": torch.zeros(1)}, {"acc": float("nan")}
            ),
            "meta: entries must be",
        ),
        (
            lambda: TaskCommit(
                0, own_at(0, [0], 4, 1.0).layers, {"x": torch.zeros(1, dtype=torch.complex64)}
            ),
            "tensor dtype must be",
        ),
    ],
)
def test_commit_validation_errors(tmp_path: Path, make, match: str) -> None:
    s = small_store(tmp_path, budget=32)
    before = s.path.read_bytes()
    with pytest.raises(StoreError, match=match):
        s.commit(make())
    assert s.path.read_bytes() == before and s.num_tasks == 0


def test_fp32_and_fp16_roundtrip_bits(tmp_path: Path) -> None:
    s = small_store(tmp_path, budget=64)
    v32 = torch.tensor([[-0.0, float("inf")], [1e-40, 3.14159]])  # -0.0 and a subnormal survive
    all4 = torch.ones(2, 2, dtype=torch.bool)
    s.commit(TaskCommit(0, {"w": LayerCommit(all4, all4, 32, v32)}, {}))
    s.commit(TaskCommit(1, {"w": LayerCommit(all4, all4, 16, v32.half().float())}, {}))
    got = s.materialize(0)["w"]
    assert torch.equal(got.view(torch.int32), v32.view(torch.int32))
    assert torch.equal(s.materialize(1)["w"], v32.half().float())
    assert s.used_bits()["w"].reshape(-1).tolist() == [48] * 4


# ------------------------------------------------------------------------------------- integrity
def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def section_offset(store: PackedStore, name: str) -> int:
    data = store.path.read_bytes()
    payload = store.section_bytes(name)
    return data.index(payload, 40) if payload else -1


@pytest.mark.parametrize(
    "section",
    [
        "model",
        "task/0/meta",
        "task/0/masks",
        "task/0/codes",
        "task/1/codebooks",
        "task/1/tensors",
        "task/1/masks",
    ],
)
def test_flipped_byte_in_section_names_it(handmade: PackedStore, section: str) -> None:
    off = section_offset(handmade, section) + len(handmade.section_bytes(section)) // 2
    flip(handmade.path, off)
    with pytest.raises(StoreError, match=f"section '{section}' checksum must match"):
        PackedStore.open(handmade.path)


@pytest.mark.parametrize(
    ("offset", "match"),
    [
        (0, "must start with b'TPKSTORE'"),
        (17, "header checksum must match"),  # table offset field
        (30, "header checksum must match"),  # table crc field
        (-3, "section table checksum must match"),
    ],
)
def test_flipped_byte_in_header_and_table(handmade: PackedStore, offset: int, match: str) -> None:
    flip(handmade.path, offset % handmade.path.stat().st_size)
    with pytest.raises(StoreError, match=match):
        PackedStore.open(handmade.path)


@pytest.mark.parametrize("keep", [0, 10, 39, 41, 200, -1])
def test_truncated_file(handmade: PackedStore, keep: int) -> None:
    data = handmade.path.read_bytes()
    handmade.path.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    with pytest.raises(StoreError, match="truncated"):
        PackedStore.open(handmade.path)


def test_trailing_bytes(handmade: PackedStore) -> None:
    handmade.path.write_bytes(handmade.path.read_bytes() + b"\0")
    with pytest.raises(StoreError, match="trailing bytes"):
        PackedStore.open(handmade.path)


def test_unknown_version(handmade: PackedStore) -> None:
    data = bytearray(handmade.path.read_bytes())
    data[8:12] = struct.pack("<I", 3)
    handmade.path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="format version 3 is not supported; .* reads versions "
                       "1, 2"):
        PackedStore.open(handmade.path)


def test_wrong_fingerprint_unknown_task_and_exit_code(handmade: PackedStore) -> None:
    with pytest.raises(StoreError, match="built for model 'mlp-4x8', this recipe builds 'cnn'"):
        PackedStore.open(handmade.path, expect_fingerprint="cnn")
    with pytest.raises(StoreError, match=r"task id must be in 0..1 .* found 2") as info:
        handmade.materialize(2)
    assert isinstance(info.value, InputError) and info.value.exit_code == 2
    with pytest.raises(StoreError, match="must be readable"):
        PackedStore.open(handmade.path.with_name("missing.tpk"))


def test_create_refuses_to_clobber_and_bad_args(handmade: PackedStore) -> None:
    with pytest.raises(StoreError, match="must not exist yet"):
        PackedStore.create(handmade.path, {"fc": (4, 8)}, "x")
    p = handmade.path.with_name("n.tpk")
    with pytest.raises(StoreError, match="bit_budget must be an int in 1..64, found 0"):
        PackedStore.create(p, {"fc": (4, 8)}, "x", bit_budget=0)
    with pytest.raises(StoreError, match="shapes of ints >= 0"):
        PackedStore.create(p, {"fc": (4, -1)}, "x")


def test_failed_replace_leaves_old_file(handmade: PackedStore, monkeypatch) -> None:
    before = handmade.path.read_bytes()

    def boom(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StoreError, match="must be writable, found .*No space left"):
        handmade.commit(
            TaskCommit(
                2,
                {"fc": LayerCommit(flat_bool(32, [0]), flat_bool(32, []), 1, torch.zeros(4, 8))},
                {},
            )
        )
    assert handmade.path.read_bytes() == before and handmade.num_tasks == 2
    assert sorted(p.name for p in handmade.path.parent.iterdir()) == ["s.tpk"]  # no temp left


def test_sleep_hook_and_concurrent_writer(handmade: PackedStore, monkeypatch) -> None:
    c = TaskCommit(
        2, {"fc": LayerCommit(flat_bool(32, [0]), flat_bool(32, []), 1, torch.zeros(4, 8))}, {}
    )
    monkeypatch.setenv(SLEEP_ENV, "soon")
    with pytest.raises(StoreError, match=f"{SLEEP_ENV} must be a number of seconds, found 'soon'"):
        handmade.commit(c)
    monkeypatch.setenv(SLEEP_ENV, "0.01")
    other = PackedStore.open(handmade.path)
    other.commit(c)
    with pytest.raises(StoreError, match="must be unchanged since it was opened"):
        handmade.commit(c)
    assert PackedStore.open(handmade.path).num_tasks == 3


# ---------------------------------------------------------------------------------------- report
def test_report_adds_up_to_file_size(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    store = PackedStore.create(tmp_path / "r.tpk", LAYERS, "fp")
    for t in range(3):
        store.commit(random_commit(store, t, g))
    r = store.report()
    size = os.path.getsize(store.path)
    assert r.file_size == size == sum(r.bytes.values())
    m = r.as_metrics()
    assert m["store/bytes_total"] == size
    assert (
        sum(m[f"store/bytes_{c}"] for c in ("codes", "masks", "codebooks", "tensors", "metadata"))
        == size
    )
    assert m["store/ratio_to_dense_fp32"] == size / (4 * (8 * 27 + 64 * 216))
    assert 0 < m["store/union_density"] == r.tasks[-1].union_density <= 1
    for task in r.tasks:
        for comp in ("codes", "masks"):
            assert task.bytes[comp] == sum(getattr(lr, f"bytes_{comp}") for lr in task.layers)
        assert task.bytes["tensors"] == 10 * 4 * 4 + 8
    assert r.tasks[1].layers[1].bits == 32 and r.tasks[1].layers[1].bits_per_own_weight == 32.0
    text = format_report(r)
    assert "(task total)" in text and f"file {size} B" in text
    assert '"file_size": ' + str(size) in format_report(r, as_json=True)


# ----------------------------------------------------------------------------------------- speed
def test_speed_5m_positions(tmp_path: Path) -> None:
    """784x2000 + 2000x2000 (5.6M positions), 5% own at 4 bits: commit+open+materialize.

    Measured on the 2-core dev box: ~0.2 s commit, ~0.15 s open, ~0.03 s materialize.
    """
    layers = {"fc1": (2000, 784), "fc2": (2000, 2000)}
    g = torch.Generator().manual_seed(0)
    lcs = {}
    for name, shape in layers.items():
        own = torch.rand(shape, generator=g) < 0.05
        cb = torch.linspace(-1, 1, 16)
        values = cb[torch.randint(0, 16, shape, generator=g)]
        lcs[name] = LayerCommit(own, own, 4, values, cb)
    t0 = time.perf_counter()
    store = PackedStore.create(tmp_path / "big.tpk", layers, "mlp")
    store.commit(TaskCommit(0, lcs, {}))
    t1 = time.perf_counter()
    again = PackedStore.open(tmp_path / "big.tpk")
    t2 = time.perf_counter()
    out = again.materialize(0)
    t3 = time.perf_counter()
    print(f"commit {t1 - t0:.3f}s open {t2 - t1:.3f}s materialize {t3 - t2:.3f}s")
    assert torch.equal(out["fc2"], torch.where(lcs["fc2"].own, lcs["fc2"].values, 0.0))
    assert t3 - t0 < 3.0
