"""TVM-specific behaviour: tuning database reuse, bundles, aarch64 cross compile, RPC loopback."""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from compilers import CompileOptions, Target, get_compiler, load_bundle, measure
from compilers.errors import DeviceLost, RunTimedOut, TargetUnavailable
from compilers.tvm.rpc import call_with_retries, classify

from .conftest import block_sparse_mlp

pytestmark = pytest.mark.tvm


def test_tuned_build_is_reused_from_database(tmp_path) -> None:  # noqa: ANN001
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = torch.randn(1, 16)
    first = get_compiler("tvm").compile(model.eval(), x, Target.host(),
        CompileOptions(tune_trials=2, cache_dir=tmp_path))
    assert first.tuned and first.notes["workloads_tuned"] == 2
    # every workload builds with a record from the database, not TVM's default lowering (the
    # records were once silently never applied)
    assert len(first.notes["schedules"]) == 2
    assert set(first.notes["schedules"].values()) <= {"gemv", "metaschedule"}
    assert list(tmp_path.glob("tvm-*/host-*/database_tuning_record.json"))
    start = time.perf_counter()
    again = get_compiler("tvm").compile(model.eval(), x, Target.host(),
        CompileOptions(tune_trials=2, cache_dir=tmp_path))  # a fresh compiler: no memory cache
    assert time.perf_counter() - start < 2.0
    assert again.notes["workloads_tuned"] == 0
    assert again.notes["schedules"] == first.notes["schedules"]
    assert again.tuning_db_hash == first.tuning_db_hash
    assert again.numerics is not None and again.numerics.max_rel_err < 1e-4


def test_compile_cache_returns_same_object(tmp_path) -> None:  # noqa: ANN001
    compiler, model, x = get_compiler("tvm"), block_sparse_mlp(), torch.randn(1, 32)
    a = compiler.compile(model, x, Target.host(),
        CompileOptions(transforms=("block_sparse",), cache_dir=tmp_path))
    b = compiler.compile(model, x, Target.host(),
        CompileOptions(transforms=("block_sparse",), cache_dir=tmp_path))
    assert a is b


def test_cuda_target_is_skipped_cleanly_without_gpu(tmp_path) -> None:  # noqa: ANN001
    from compilers.tvm import load

    if load().tvm.cuda(0).exist:
        pytest.skip("a GPU is present: the unavailable-GPU path cannot be exercised")
    with pytest.raises(TargetUnavailable, match="needs a CUDA GPU"):
        get_compiler("tvm").compile(block_sparse_mlp(), torch.randn(1, 32), Target.cuda(),
            CompileOptions(cache_dir=tmp_path))


def test_host_bundle_roundtrip(tmp_path) -> None:  # noqa: ANN001
    model, x = block_sparse_mlp(), torch.randn(1, 32)
    folder = get_export()(model, x, Target.host(), tmp_path / "bundles", task=3,
                          store_hash="abc123", cache_dir=tmp_path / "cache")
    assert folder == tmp_path / "bundles" / "host" / "task-3"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["task"] == 3 and manifest["store_hash"] == "abc123"
    assert manifest["numerics"]["passed"] and manifest["latency"]["median_ms"] > 0
    assert (folder / "model.onnx").stat().st_size > 0
    bundle = load_bundle(folder)
    assert torch.allclose(bundle.run(x), model(x), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("transforms", [("shrink", "block_sparse"), ("shrink", "int8")])
def test_bundle_onnx_and_library_come_from_one_prepared_graph(tmp_path, transforms) -> None:  # noqa: ANN001
    """The ONNX file and the TVM library of a bundle: same layer shapes, same outputs."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    from compilers import apply_transforms

    model, x = block_sparse_mlp(), torch.randn(1, 32)
    folder = get_export()(model, x, Target.host(), tmp_path / "b", task=0, store_hash="h",
                          transforms=transforms, cache_dir=tmp_path / "cache")
    graph = onnx.load(str(folder / "model.onnx")).graph
    onnx_shapes = sorted(tuple(t.dims) for t in graph.initializer if len(t.dims) == 2)
    prepared = apply_transforms(model, transforms)  # what the library was built from
    built_shapes = sorted(tuple(t.shape) for name, t in prepared.state_dict().items()
                          if t.dim() == 2)
    assert onnx_shapes == built_shapes
    # with block_sparse, shrink keeps the block-sparse layer whole (in both files)
    assert ((64, 64) if "block_sparse" in transforms else (48, 64)) in built_shapes
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["threads"] == 1 and manifest["latency"]["threads"] == 1
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = manifest["threads"]
    sess = ort.InferenceSession(str(folder / "model.onnx"), opts,
                                providers=["CPUExecutionProvider"])
    from_onnx = sess.run(None, {"input": x.numpy()})[0]
    from_library = load_bundle(folder).run(x).numpy()
    np.testing.assert_allclose(from_onnx, from_library, rtol=1e-4, atol=1e-5)


def test_aarch64_bundle_is_cross_compiled(tmp_path) -> None:  # noqa: ANN001
    if shutil.which("aarch64-linux-gnu-gcc") is None:
        pytest.skip("aarch64-linux-gnu-gcc not installed (Debian gcc-aarch64-linux-gnu)")
    model, x = block_sparse_mlp(), torch.randn(1, 32)
    folder = get_export()(model, x, Target.aarch64(), tmp_path, task=0, store_hash="h",
                          cache_dir=tmp_path / "cache")
    lib = (folder / "model-b1.so").read_bytes()
    assert lib[:4] == b"\x7fELF" and lib[18] == 183  # e_machine == EM_AARCH64
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["latency"] is None and manifest["numerics"] is None
    with pytest.raises(TargetUnavailable, match="aarch64"):
        load_bundle(folder).run(x)


def get_export():  # noqa: ANN201
    from compilers import export_bundle

    return export_bundle


def test_lazy_bundle_wrappers_match_compilers_export() -> None:
    # compilers/__init__.py repeats these signatures so `import compilers` stays TVM-free.
    import inspect

    import compilers
    from compilers import export as export_module

    for name in ("export_bundle", "load_bundle"):
        assert inspect.signature(getattr(compilers, name)) == inspect.signature(
            getattr(export_module, name)), name


def test_rpc_loopback_measurement(tmp_path) -> None:  # noqa: ANN001
    from compilers.tvm.rpc import start_loopback

    farm = start_loopback(key="taskpack-test")
    try:
        model, x = block_sparse_mlp(), torch.randn(1, 32)
        compiled = get_compiler("tvm").compile(
            model, x, farm.target(),
            CompileOptions(transforms=("block_sparse",), cache_dir=tmp_path))
        assert compiled.numerics is not None and compiled.numerics.max_rel_err < 1e-4
        m = measure(compiled, x, min_repeats=3, max_repeats=5, min_sample_ms=2.0)
        assert m.target_kind == "rpc" and "taskpack-test" in m.device and m.median_ms > 0
        assert m.threads == compiled.threads == 1  # set on the remote pool before timing
    finally:
        farm.close()


def test_rpc_errors_are_classified_and_retried() -> None:
    calls = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("socket closed")
        return 7

    assert call_with_retries(flaky, timeout_s=5, retries=2) == 7 and len(calls) == 3
    assert isinstance(classify(TimeoutError("x")), RunTimedOut)
    with pytest.raises(RunTimedOut, match="did not finish in time"):
        call_with_retries(lambda: time.sleep(2), timeout_s=0.2, retries=1)


def test_unreachable_tracker_is_device_lost(tmp_path) -> None:  # noqa: ANN001
    target = Target.rpc("127.0.0.1", 1, "nobody")
    compiled = get_compiler("tvm", check=False).compile(
        block_sparse_mlp(), torch.randn(1, 32), target, CompileOptions(cache_dir=tmp_path))
    compiled.rpc_retries, compiled.rpc_timeout_s = 0, 10
    with pytest.raises(DeviceLost, match="reachable through the tracker"):
        compiled.run(torch.randn(1, 32))


def test_thread_setting_keeps_the_callers_cpu_affinity() -> None:
    """TVM re-binds the configuring thread: at 1 thread it pinned Python (and torch) to core 0."""
    import os

    from compilers.tvm.runtime import set_threads

    before = os.sched_getaffinity(0)
    for n in (1, max(2, len(before)), 1):
        set_threads(n)
        assert os.sched_getaffinity(0) == before
