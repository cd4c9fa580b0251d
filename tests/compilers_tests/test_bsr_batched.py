"""Batched block-sparse kernel schedules: every candidate vs numpy, the transpose kernel, and the
measured schedule table beside the tuning database (compilers/tvm/bsr_tuning.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compilers import CompileOptions, Target, get_compiler
from compilers.tvm import load, to_tvm_target
from compilers.tvm.bsr_tuning import BSR_SCHEDULES_FILE, BSRScheduleTable
from compilers.tvm.kernels.bsr import (
    BSRSchedule,
    bsr_linear_kernel,
    default_schedule,
    pack_bsr,
    schedule_candidates,
    transpose_kernel,
)

from .conftest import block_sparse_mlp

pytestmark = pytest.mark.tvm


def _weight(m: int, k: int, bh: int, bw: int, density: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keep = rng.random((m // bh, k // bw)) < density
    w = rng.standard_normal((m, k)).astype(np.float32)
    return w * np.kron(keep, np.ones((bh, bw), np.float32))


def _run(func, *arrays: np.ndarray, out_shape: tuple[int, ...]) -> np.ndarray:  # noqa: ANN001
    api = load()
    lib = api.tvm.compile(api.tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                          target=to_tvm_target(Target.host()))
    dev = api.tvm.cpu(0)
    out = api.tvm.runtime.tensor(np.zeros(out_shape, np.float32), dev)
    lib["main"](*[api.tvm.runtime.tensor(a, dev) for a in arrays], out)
    return out.numpy()


def _bsr(weight: np.ndarray, bh: int, bw: int, x: np.ndarray, sch: BSRSchedule, relu: bool,
         scale: np.ndarray | None = None) -> np.ndarray:
    m, _ = weight.shape
    packed = pack_bsr(weight, bh, bw, sch.u)
    func = bsr_linear_kernel(x.shape[0], packed, relu, schedule=sch)
    xin = np.ascontiguousarray(x.T) if sch.x_transposed else x
    s = np.ones(m, np.float32) if scale is None else scale
    bias = np.linspace(-1, 1, m).astype(np.float32)
    return _run(func, xin, packed.data, packed.indices, packed.indptr, s, bias,
                out_shape=(x.shape[0], m))


@pytest.mark.parametrize("batch", [1, 8, 64])
def test_every_candidate_schedule_matches_numpy(batch: int) -> None:
    w = _weight(64, 48, 16, 1, 0.3)
    x = np.random.default_rng(1).standard_normal((batch, 48)).astype(np.float32)
    bias = np.linspace(-1, 1, 64).astype(np.float32)
    for relu in (True, False) if batch == 64 else (True,):
        ref = x @ w.T + bias
        ref = np.maximum(ref, 0) if relu else ref
        for sch in schedule_candidates(batch):
            got = _bsr(w, 16, 1, x, sch, relu)
            np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5, err_msg=sch.name())


@pytest.mark.parametrize("block", [(8, 1), (4, 4), (4, 1)])
def test_batched_default_schedule_other_blocks_and_int8(block: tuple[int, int]) -> None:
    bh, bw = block
    w = _weight(32, 32, bh, bw, 0.4, seed=2)
    x = np.random.default_rng(3).standard_normal((16, 32)).astype(np.float32)
    bias = np.linspace(-1, 1, 32).astype(np.float32)
    sch = default_schedule(16)
    assert sch.x_transposed and sch.nt == 8
    np.testing.assert_allclose(_bsr(w, bh, bw, x, sch, True), np.maximum(x @ w.T + bias, 0),
                               rtol=1e-5, atol=1e-5)
    # int8 block data with per-row scales: y = (x . q) * s + b
    scale = (np.abs(w).max(axis=1) / 127 + 1e-8).astype(np.float32)
    q = np.round(w / scale[:, None]).astype(np.int8)
    ref = (x @ q.astype(np.float32).T) * scale + bias
    np.testing.assert_allclose(_bsr(q, bh, bw, x, sch, False, scale), ref, rtol=1e-5, atol=1e-4)


def test_bad_schedules_are_rejected() -> None:
    packed = pack_bsr(_weight(16, 8, 16, 1, 0.5), 16, 1, 1)
    with pytest.raises(ValueError, match="must divide the batch"):
        bsr_linear_kernel(6, packed, True, schedule=BSRSchedule(1, 4))
    with pytest.raises(ValueError, match="order"):
        bsr_linear_kernel(8, packed, True, schedule=BSRSchedule(1, 4, order="cols"))


@pytest.mark.parametrize("shape", [(64, 784), (3, 10)])
def test_transpose_kernel(shape: tuple[int, int]) -> None:
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    got = _run(transpose_kernel(*shape), x, out_shape=shape[::-1])
    np.testing.assert_array_equal(got, x.T)


def test_schedule_table_measures_once_and_records(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    table = BSRScheduleTable(tmp_path, to_tvm_target(Target.host()))
    w = _weight(64, 64, 16, 1, 0.2)
    first = table.choose(w, 16, 1, 8, True)
    assert first in schedule_candidates(8)
    entry = json.loads((tmp_path / BSR_SCHEDULES_FILE).read_text())
    (key, record), = entry.items()
    assert key == BSRScheduleTable.workload(w, 16, 1, 8, True)
    assert set(record["ms"]) == {s.name() for s in schedule_candidates(8)}
    assert min(record["ms"], key=record["ms"].__getitem__) == first.name()

    def no_measuring(*_a, **_k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("a recorded workload must not be measured again")

    monkeypatch.setattr(BSRScheduleTable, "_measure", no_measuring)
    again = BSRScheduleTable(tmp_path, to_tvm_target(Target.host()))
    assert again.choose(w, 16, 1, 8, True) == first and again.chosen == [first.name()]


@pytest.mark.parametrize("tune_trials", [0, 1])
def test_batched_build_matches_eager(tmp_path, tune_trials: int) -> None:  # noqa: ANN001
    """Tuned builds choose a measured schedule per layer; untuned ones the default. The build's
    numerics check (vs eager torch) runs inside compile()."""
    model, x = block_sparse_mlp(), torch.randn(16, 32)
    compiled = get_compiler("tvm").compile(model, x, Target.host(), CompileOptions(
        transforms=("block_sparse",), tune_trials=tune_trials, cache_dir=tmp_path, threads=1))
    assert compiled.numerics is not None and compiled.numerics.max_rel_err < 1e-4
    torch.testing.assert_close(compiled.run(x), model(x), rtol=1e-4, atol=1e-5)
    schedules = compiled.notes["bsr_schedules"]
    assert len(schedules) == (2 if tune_trials else 0)
    transposed = tune_trials == 0 or any("-xt-" in s for s in schedules)
    assert ("transpose" in " ".join(compiled.notes["hand_kernels"])) == transposed
