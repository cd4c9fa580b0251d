"""Block-sparse conv layers: the torch rewrite, the direct BSR conv kernel in the TVM build."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compilers import CompileOptions, Target, apply_transforms, get_compiler
from compilers.ops.sparse import BlockSparseConv2d
from compilers.transforms import to_block_sparse, to_int8
from compilers.tvm import hand_kernels, import_relax

pytestmark = pytest.mark.tvm


def _prune_blocks(conv: nn.Conv2d, frac: float, bh: int = 16, seed: int = 0) -> None:
    """Zero ``frac`` of the (bh x 1) blocks of the weight viewed as (O, C*kh*kw)."""
    gen = torch.Generator().manual_seed(seed)
    o, k = conv.weight.shape[0], conv.weight[0].numel()
    keep = torch.rand(o // bh, k, generator=gen) >= frac
    with torch.no_grad():
        conv.weight.mul_(keep.repeat_interleave(bh, 0).reshape(conv.weight.shape).float())


def small_cnn() -> nn.Sequential:
    """conv 16->32 3x3 pad 1 (90% of 16x1 blocks pruned), ReLU, conv 32->16 3x3 stride 2 (80%
    pruned), flatten, linear."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 16, 3, stride=2, padding=1),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    ).eval()
    _prune_blocks(model[0], 0.9)
    _prune_blocks(model[2], 0.8, seed=1)
    return model


def _build(model: nn.Module, x: torch.Tensor, tmp_path, transforms=("block_sparse",)):  # noqa: ANN001, ANN202
    return get_compiler("tvm").compile(model, x, Target.host(),
        CompileOptions(transforms=transforms, cache_dir=tmp_path))


def test_transform_rewrites_block_sparse_convs_exactly() -> None:
    model = small_cnn()
    sparse = to_block_sparse(model)
    assert [type(m).__name__ for m in sparse] == [
        "BlockSparseConv2d", "BlockSparseConv2d", "Flatten", "Linear"
    ]
    assert sparse[0].relu and not sparse[1].relu
    assert (sparse[0].bh, sparse[0].bw) == (16, 1) and sparse[1].stride == [2, 2]
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(sparse(x), model(x))  # eager is F.conv2d: bit-exact


@pytest.mark.parametrize("batch", [1, 2])
def test_small_cnn_build_matches_eager_and_uses_bsr_kernel(batch: int, tmp_path) -> None:  # noqa: ANN001
    model, x = small_cnn(), torch.randn(batch, 16, 8, 8)
    compiled = _build(model, x, tmp_path)
    assert compiled.numerics is not None and compiled.numerics.passed
    for inp in (x, torch.randn(batch, 16, 8, 8)):
        np.testing.assert_allclose(compiled.run(inp).numpy(), model(inp).detach().numpy(),
                                   rtol=1e-4, atol=1e-5)
    # both convs run the direct BSR conv kernel; the head (dense linear) does not
    assert compiled.notes["hand_kernels"] == ["bsr_conv2d", "bsr_conv2d1"]
    mod = import_relax(apply_transforms(model, ("block_sparse",)), x)
    main = mod["main"].script()
    assert "R.nn.conv2d" not in main  # no dense conv left
    assert main.count("call_tir(bsr_conv2d") == 2 and "im2col" not in main


def test_non_qualifying_convs_stay_dense_and_build(tmp_path) -> None:  # noqa: ANN001
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(),  # dense weight: no block pattern
        nn.Conv2d(16, 16, 3, padding=1, groups=2),  # grouped: declined even when block-pruned
        nn.Conv2d(16, 16, 1, padding_mode="zeros", padding="same"),  # string padding: declined
        nn.Flatten(), nn.Linear(16 * 6 * 6, 4),
    ).eval()
    _prune_blocks(model[2], 0.9, bh=8)
    _prune_blocks(model[3], 0.9)
    sparse = to_block_sparse(model)
    assert [type(m) for m in sparse[:4]] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.Conv2d]
    x = torch.randn(1, 4, 6, 6)
    compiled = _build(model, x, tmp_path)
    assert compiled.numerics is not None and compiled.numerics.passed
    assert compiled.notes["hand_kernels"] == []
    main = import_relax(apply_transforms(model, ("block_sparse",)), x)["main"].script()
    assert main.count("R.nn.conv2d") == 3


def test_transform_declines_groups_and_block_sparse_conv_rejects_them() -> None:
    conv = nn.Conv2d(16, 32, 3, groups=2)
    _prune_blocks(conv, 0.95)
    assert isinstance(to_block_sparse(nn.Sequential(conv))[0], nn.Conv2d)
    with pytest.raises(ValueError, match="groups=1"):
        BlockSparseConv2d(conv, 16, 1, relu=False)


@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "hw", "bias"),
    [(2, (1, 0), 1, (9, 7), True), (1, 2, 2, (7, 7), False), (3, 0, 1, (10, 10), True)],
)
def test_strides_padding_dilation_and_batch_tiles(
    stride: int, padding, dilation: int, hw: tuple[int, int], bias: bool, tmp_path  # noqa: ANN001
) -> None:
    torch.manual_seed(1)
    conv = nn.Conv2d(6, 16, 3, stride=stride, padding=padding, dilation=dilation, bias=bias)
    _prune_blocks(conv, 0.7, bh=8, seed=2)
    model = nn.Sequential(conv).eval()
    assert isinstance(to_block_sparse(model)[0], BlockSparseConv2d)
    x = torch.randn(2, 6, *hw)
    compiled = _build(model, x, tmp_path)
    assert compiled.notes["hand_kernels"] == ["bsr_conv2d"]
    np.testing.assert_allclose(compiled.run(x).numpy(), model(x).detach().numpy(),
                               rtol=1e-4, atol=1e-5)


def test_int8_leaves_block_sparse_convs_fp32(tmp_path) -> None:  # noqa: ANN001
    model = to_int8(to_block_sparse(small_cnn()))
    assert isinstance(model[0], BlockSparseConv2d) and model[0].weight.dtype == torch.float32
    assert type(model[3]).__name__ == "Int8Linear"
    x = torch.randn(1, 16, 8, 8)
    compiled = _build(small_cnn(), x, tmp_path, transforms=("block_sparse", "int8"))
    assert compiled.numerics is not None and compiled.numerics.passed
    assert "bsr_conv2d" in compiled.notes["hand_kernels"]
    assert "int8_linear" in compiled.notes["hand_kernels"]


def test_hand_kernels_lists_linear_kernels(tmp_path) -> None:  # noqa: ANN001
    from .conftest import block_sparse_mlp

    x = torch.randn(1, 32)
    mod = import_relax(apply_transforms(block_sparse_mlp(), ("block_sparse",)), x)
    assert hand_kernels(mod) == ["bsr_linear", "bsr_linear1"]
