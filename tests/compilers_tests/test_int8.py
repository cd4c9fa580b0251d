"""The int8 transform: exact quantization on hand-checked values, int8 kernels in the TVM build."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compilers import CompileOptions, Target, check_numerics, fixed_inputs, get_compiler
from compilers.ops.int8 import Int8Linear, dequantize_weight, quantize_weight
from compilers.ops.sparse import BlockSparseLinear
from compilers.transforms import dequantize_int8, to_block_sparse, to_int8
from compilers.tvm.kernels.int8 import pack_int8

from .conftest import block_sparse_mlp, tiny_cnn


def test_quantize_weight_per_row_symmetric() -> None:
    w = torch.tensor([[2.54, -1.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0], [-0.1, 0.04, 0.0, 0.1]])
    q, scale = quantize_weight(w)
    assert q.dtype == torch.int8
    assert torch.equal(q, torch.tensor([[127, -50, 25, 0], [0, 0, 0, 0], [-127, 51, 0, 127]],
                                       dtype=torch.int8))
    assert torch.allclose(scale, torch.tensor([0.02, 1.0, 0.1 / 127]))  # all-zero row: scale 1
    assert torch.equal(dequantize_weight(q, scale), q.float() * scale[:, None])
    assert ((dequantize_weight(q, scale) - w).abs() <= scale[:, None] / 2 + 1e-7).all()


def test_to_int8_fuses_relu_and_keeps_conv_fp32() -> None:
    mlp = to_int8(block_sparse_mlp())
    assert [type(m).__name__ for m in mlp] == ["Int8Linear"] * 3
    assert [m.relu for m in mlp] == [True, True, False]
    cnn = to_int8(tiny_cnn())
    assert [type(m).__name__ for m in cnn][0] == "Conv2d" and isinstance(cnn[5], Int8Linear)
    assert cnn[0].weight.dtype == torch.float32 and cnn[5].qweight.dtype == torch.int8


def test_eager_int8_is_the_dequantized_model() -> None:
    model, x = block_sparse_mlp(), torch.randn(3, 32)
    quantized, dense = to_int8(model), dequantize_int8(model)
    assert all(type(m) in (nn.Linear, nn.ReLU) for m in dense)
    int8 = quantized[1]
    assert torch.equal(dense[2].weight, dequantize_weight(int8.qweight, int8.scale))
    assert torch.allclose(quantized(x), dense(x), atol=1e-6)
    assert not torch.allclose(quantized(x), model(x), atol=1e-5)  # int8 changes the outputs


def test_block_sparse_layers_get_int8_blocks() -> None:
    model = to_int8(to_block_sparse(block_sparse_mlp()))
    assert [type(m).__name__ for m in model] == ["BlockSparseLinear"] * 2 + ["Int8Linear"]
    bsr = model[0]
    assert isinstance(bsr, BlockSparseLinear) and bsr.weight.dtype == torch.int8
    assert bsr.scale is not None and "int8" in repr(bsr)
    source = block_sparse_mlp()[0].weight
    assert (bsr.weight[source == 0] == 0).all()  # pruned blocks stay pruned


def test_pack_int8_layout_and_errors() -> None:
    q = np.arange(-12, 12, dtype=np.int8).reshape(8, 3)
    packed = pack_int8(q, np.ones(8, np.float32))
    assert packed.data.shape == (1, 3, 8)  # V = 8 output rows per tile, k-major inside
    assert np.array_equal(packed.data[0], q.T)
    assert pack_int8(q[:6], np.ones(6, np.float32)).data.shape == (3, 3, 2)  # V = 2 divides 6
    with pytest.raises(ValueError, match="2-D int8 array"):
        pack_int8(q.astype(np.float32), np.ones(8, np.float32))
    with pytest.raises(ValueError, match=r"scale must have shape \(8,\)"):
        pack_int8(q, np.ones(3, np.float32))


@pytest.mark.tvm
class TestTVMInt8:
    @pytest.mark.parametrize(
        ("transforms", "batch"),
        [(("int8",), 1), (("int8",), 4), (("shrink", "int8"), 1), (("block_sparse", "int8"), 1),
         (("shrink", "block_sparse", "int8"), 4)],
    )
    def test_matches_quantized_eager(self, transforms, batch: int, cache_dir) -> None:  # noqa: ANN001
        model, x = block_sparse_mlp(), torch.randn(batch, 32)
        compiled = get_compiler("tvm").compile(model, x, Target.host(),
            CompileOptions(transforms=transforms, cache_dir=cache_dir))
        assert compiled.numerics is not None and compiled.numerics.max_rel_err < 1e-4
        eager = get_compiler("eager").compile(model, x, Target.host(),
            CompileOptions(transforms=transforms))
        assert check_numerics(compiled, eager.module, [torch.randn(batch, 32)]).passed
        assert tuple(compiled.run(x).shape) == (batch, 10)

    def test_weights_are_int8_constants(self, cache_dir) -> None:  # noqa: ANN001
        from compilers import apply_transforms
        from compilers.tvm import TuningDatabase, constant_bytes, import_relax, to_tvm_target

        model, x = block_sparse_mlp(), torch.randn(1, 32)
        mod = import_relax(apply_transforms(model, ("int8",)), x)
        lowered = TuningDatabase.legalize(mod, to_tvm_target(Target.host()))  # FoldConstant ran
        n_weights = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
        n_rows = sum(m.out_features for m in model if isinstance(m, nn.Linear))
        assert constant_bytes(lowered) == {"int8": n_weights, "float32": 4 * 2 * n_rows}
        assert '"int8"' in lowered["int8_linear"].script()
        compiled = get_compiler("tvm").compile(model, x, Target.host(),
            CompileOptions(transforms=("int8",), cache_dir=cache_dir))
        assert compiled.notes["constant_bytes"]["int8"] == n_weights

    def test_quantization_error_is_recorded_not_hidden(self, cache_dir) -> None:  # noqa: ANN001
        model, x = block_sparse_mlp(), torch.randn(1, 32)
        compiled = get_compiler("tvm").compile(model, x, Target.host(),
            CompileOptions(transforms=("int8",), cache_dir=cache_dir))
        error = compiled.notes["int8_error"]
        assert 1e-4 < error["max_rel_err"] < 0.02 and error["max_abs_err"] > 0
        against_fp32 = check_numerics(compiled, model, fixed_inputs(x), raise_on_mismatch=False)
        assert not against_fp32.passed  # vs the fp32 original: the 1e-4 check is not loosened
        assert against_fp32.max_rel_err == pytest.approx(error["max_rel_err"], rel=1e-3)

    def test_conv_stays_fp32_and_builds(self, cache_dir) -> None:  # noqa: ANN001
        model, x = tiny_cnn(), torch.randn(2, 1, 8, 8)
        compiled = get_compiler("tvm").compile(model, x, Target.host(),
            CompileOptions(transforms=("int8",), cache_dir=cache_dir))
        assert compiled.numerics is not None and compiled.numerics.max_rel_err < 1e-4
        assert compiled.notes["constant_bytes"]["int8"] == model[5].weight.numel()
        assert compiled.notes["constant_bytes"]["float32"] >= 4 * model[0].weight.numel()

    def test_tuned_build_has_nothing_to_tune(self, tmp_path) -> None:  # noqa: ANN001
        model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
        x = torch.randn(1, 16)
        compiled = get_compiler("tvm").compile(model, x, Target.host(),
            CompileOptions(transforms=("int8",), tune_trials=2, cache_dir=tmp_path))
        assert compiled.tuned and compiled.notes["workloads_tuned"] == 0
        assert compiled.numerics is not None and compiled.numerics.max_rel_err < 1e-4

    def test_linear_on_3d_input(self, cache_dir) -> None:  # noqa: ANN001
        model, x = nn.Sequential(nn.Linear(8, 16)).eval(), torch.randn(2, 3, 8)
        compiled = get_compiler("tvm").compile(model, x, Target.host(),
            CompileOptions(transforms=("int8",), cache_dir=cache_dir))
        assert tuple(compiled.run(x).shape) == (2, 3, 16)
        assert compiled.numerics is not None and compiled.numerics.max_rel_err < 1e-4
