"""The unstructured speed path: the CSR kernel vs numpy, a TVM build vs eager torch, and the
realizability label it earns (only with ``csr_sparse`` among the target's transforms)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compilers import CompileOptions, Target, get_compiler
from compilers.realizability import LayerSpec, layer_realizability
from compilers.tvm import load, to_tvm_target
from compilers.tvm.kernels.csr import GROUP, csr_linear_kernel, pack_csr


def _sparse(m: int, k: int, density: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((m, k)) * (rng.random((m, k)) < density)).astype(np.float32)


def test_pack_csr_is_exact_and_padded() -> None:
    w = _sparse(8, 12, 0.3)
    w[3] = 0  # an empty row
    p = pack_csr(w)
    assert p.nnz == int((w != 0).sum())
    dense = np.zeros_like(w)
    for r in range(8):
        lo, hi = p.indptr[r] * GROUP, p.indptr[r + 1] * GROUP
        assert (hi - lo) % GROUP == 0
        np.add.at(dense[r], p.indices[lo:hi], p.data[lo:hi])
    np.testing.assert_array_equal(dense, w)
    assert pack_csr(np.zeros((2, 3), np.float32)).data.shape == (GROUP,)


@pytest.mark.tvm
@pytest.mark.parametrize("batch", [1, 3, 8, 64])
def test_csr_kernel_matches_numpy(batch: int) -> None:
    api = load()
    w = _sparse(40, 24, 0.15, seed=batch)
    x = np.random.default_rng(1).standard_normal((batch, 24)).astype(np.float32)
    bias = np.linspace(-1, 1, 40).astype(np.float32)
    p = pack_csr(w)
    dev = api.tvm.cpu(0)
    for relu in (True, False):
        f = csr_linear_kernel(batch, p, relu)
        lib = api.tvm.compile(api.tvm.IRModule({"main": f.with_attr("global_symbol", "main")}),
                              target=to_tvm_target(Target.host()))
        y = api.tvm.runtime.tensor(np.zeros((batch, 40), np.float32), dev)
        args = [np.ascontiguousarray(x.T), p.data, p.indices, p.indptr, bias]
        lib["main"](*[api.tvm.runtime.tensor(a, dev) for a in args], y)
        ref = x @ w.T + bias
        np.testing.assert_allclose(y.numpy(), np.maximum(ref, 0) if relu else ref, rtol=1e-5,
                                   atol=1e-5)


def _unstructured_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 10)).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_((torch.rand(layer.weight.shape, generator=gen) < 0.1).float())
    return model


@pytest.mark.tvm
@pytest.mark.parametrize("batch", [1, 16])
def test_unstructured_task_builds_with_the_csr_kernel(batch: int, tmp_path) -> None:  # noqa: ANN001
    model, x = _unstructured_mlp(), torch.randn(batch, 32)
    compiled = get_compiler("tvm").compile(model, x, Target.host(), CompileOptions(
        transforms=("shrink", "block_sparse", "csr_sparse"), cache_dir=tmp_path, threads=1))
    kernels = compiled.notes["hand_kernels"]
    assert sum(k.startswith("csr_linear") for k in kernels) == 2, kernels
    assert compiled.numerics is not None and compiled.numerics.max_rel_err < 1e-4
    with torch.no_grad():
        torch.testing.assert_close(compiled.run(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.tvm
def test_a_tuned_build_keeps_the_csr_kernel_unfused(tmp_path) -> None:  # noqa: ANN001
    """With a tuning database the build first runs Relax's fusion; the CSR layer's transpose
    kernel after a legalized op (the flatten) was fused with it and FuseTIR failed (TVM 0.27)."""
    model = nn.Sequential(nn.Flatten(), *_unstructured_mlp()).eval()
    x = torch.randn(1, 2, 16)
    compiled = get_compiler("tvm").compile(model, x, Target.host(), CompileOptions(
        transforms=("block_sparse", "csr_sparse"), tune_trials=2, cache_dir=tmp_path,
        threads=1))
    assert sum(k.startswith("csr_linear") for k in compiled.notes["hand_kernels"]) == 2
    with torch.no_grad():
        torch.testing.assert_close(compiled.run(x), model(x), rtol=1e-4, atol=1e-5)


def test_unstructured_label_follows_csr_sparse() -> None:
    host = Target.host()
    spec = LayerSpec("linear", 2000, 784, 0.9, "unstructured")
    assert layer_realizability(spec, host) == "storage-only"  # default transforms: no CSR
    with_csr = ("shrink", "block_sparse", "csr_sparse")
    assert layer_realizability(spec, host, with_csr) == "speed-realizable"
    nm = LayerSpec("linear", 2000, 784, 0.5, "nm")  # 2:4 keeps half: dense is faster
    assert layer_realizability(nm, host, with_csr) == "storage-only"
    assert layer_realizability(spec, Target.cuda(), with_csr) == "storage-only"
    conv = LayerSpec("conv2d", 128, 576, 0.9, "unstructured")
    assert layer_realizability(conv, host, with_csr) == "storage-only"
