"""The direct block-sparse conv kernel (compilers/tvm/kernels/bsr_conv.py) against torch, and the
max-pool the importer fuses into it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812 - torch convention

from compilers import CompileOptions, Target, apply_transforms, get_compiler
from compilers.ops.sparse import BlockSparseConv2d
from compilers.tvm import import_relax, load, to_tvm_target
from compilers.tvm.kernels.bsr import pack_bsr
from compilers.tvm.kernels.bsr_conv import (
    STACK_BYTES,
    BSRConvGeometry,
    bsr_conv2d_kernel,
    choose_conv_blocking,
    conv_arrays,
    conv_rows,
    conv_tile,
)

pytestmark = pytest.mark.tvm


def _block_sparse_weight(o: int, c: int, kernel: tuple[int, int], block: tuple[int, int],
                         density: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    k = c * kernel[0] * kernel[1]
    keep = rng.random((o // block[0], k // block[1])) < density
    w = rng.standard_normal((o, k)).astype(np.float32) * np.kron(keep, np.ones(block, np.float32))
    return w.reshape(o, c, *kernel)


def _run_kernel(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, block: tuple[int, int],
                relu: bool, stride=(1, 1), padding=(0, 0), dilation=(1, 1), pool=(1, 1),  # noqa: ANN001
                scale: np.ndarray | None = None, rows: int = 1) -> np.ndarray:
    api = load()
    o = weight.shape[0]
    geo = BSRConvGeometry(x.shape, weight.shape[2:], stride, padding, dilation, pool)
    packed = pack_bsr(weight.reshape(o, -1), *block, group=1)
    func = bsr_conv2d_kernel(geo, packed, relu, rows=rows)
    lib = api.tvm.compile(api.tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                          target=to_tvm_target(Target.host()))
    y = api.tvm.runtime.tensor(np.full((x.shape[0], o, geo.out_h, geo.out_w), np.nan,
                                       np.float32))
    s = np.ones(o, np.float32) if scale is None else scale
    args = [x, *conv_arrays(packed, geo), s, bias]
    lib["main"](*[api.tvm.runtime.tensor(a) for a in args], y)
    return y.numpy()


def _reference(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, relu: bool, stride=(1, 1),  # noqa: ANN001
               padding=(0, 0), dilation=(1, 1), pool=(1, 1)) -> np.ndarray:  # noqa: ANN001
    y = F.conv2d(torch.from_numpy(x), torch.from_numpy(weight), torch.from_numpy(bias), stride,
                 padding, dilation)
    y = F.relu(y) if relu else y
    return (F.max_pool2d(y, pool) if pool != (1, 1) else y).numpy()


@pytest.mark.parametrize(
    ("n", "c", "o", "hw", "kernel", "stride", "padding", "dilation", "block", "pool", "relu"),
    [
        (2, 16, 32, (8, 8), (3, 3), (1, 1), (1, 1), (1, 1), (16, 1), (1, 1), True),
        (1, 3, 32, (32, 32), (3, 3), (1, 1), (1, 1), (1, 1), (16, 1), (2, 2), True),  # V=8 tiles
        (3, 4, 16, (19, 37), (5, 5), (1, 1), (2, 2), (1, 1), (16, 1), (1, 1), False),  # shifted
        (2, 6, 16, (9, 7), (3, 3), (2, 2), (1, 0), (1, 1), (8, 1), (1, 1), False),
        (2, 6, 16, (7, 7), (3, 3), (1, 1), (2, 2), (2, 2), (8, 1), (1, 1), True),
        (2, 6, 16, (10, 10), (3, 3), (3, 3), (0, 0), (1, 1), (8, 1), (1, 1), True),
        (3, 8, 16, (20, 37), (3, 2), (2, 1), (1, 2), (1, 2), (4, 4), (1, 1), False),
        (2, 3, 32, (11, 13), (3, 3), (1, 1), (1, 1), (1, 1), (16, 1), (2, 2), False),  # odd: floor
        (2, 5, 16, (11, 13), (3, 3), (2, 1), (1, 2), (1, 2), (8, 1), (3, 2), True),
        (2, 8, 16, (12, 9), (3, 2), (1, 2), (0, 1), (2, 1), (4, 4), (2, 3), True),
        (1, 2, 4, (3, 3), (1, 1), (1, 1), (0, 0), (1, 1), (4, 1), (1, 1), False),  # 1x1 conv
    ],
)
def test_kernel_matches_torch_conv(n: int, c: int, o: int, hw: tuple[int, int],
                                   kernel: tuple[int, int], stride, padding, dilation,  # noqa: ANN001
                                   block: tuple[int, int], pool: tuple[int, int],
                                   relu: bool) -> None:
    rng = np.random.default_rng(0)
    weight = _block_sparse_weight(o, c, kernel, block, 0.3, seed=1)
    x = rng.standard_normal((n, c, *hw)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    got = _run_kernel(x, weight, bias, block, relu, stride, padding, dilation, pool)
    ref = _reference(x, weight, bias, relu, stride, padding, dilation, pool)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def _unstructured_weight(o: int, c: int, kernel: tuple[int, int], density: float,
                         seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    keep = rng.random((o, c, *kernel)) < density
    return (rng.standard_normal((o, c, *kernel)) * keep).astype(np.float32)


@pytest.mark.parametrize(
    ("n", "c", "o", "hw", "kernel", "stride", "padding", "dilation", "bh", "pool", "rows"),
    [
        (2, 8, 16, (14, 14), (3, 3), (1, 1), (0, 0), (1, 1), 1, (2, 2), 6),  # all rows at once
        (2, 8, 16, (14, 14), (3, 3), (1, 1), (0, 0), (1, 1), 2, (2, 2), 4),  # last group shifted
        (2, 6, 8, (11, 13), (3, 3), (1, 1), (1, 1), (1, 1), 4, (1, 1), 3),  # no pool, shifted
        (3, 5, 4, (13, 12), (3, 2), (2, 1), (1, 2), (1, 2), 1, (3, 2), 2),  # odd pool, floor
        (2, 4, 8, (20, 37), (3, 3), (2, 2), (1, 0), (2, 1), 2, (1, 1), 5),  # V tiles, stride 2
        (1, 3, 6, (6, 6), (2, 2), (1, 1), (0, 0), (1, 1), 1, (2, 2), 9),  # rows > output rows
    ],
)
def test_row_group_kernel_matches_torch_conv(n: int, c: int, o: int, hw: tuple[int, int],
                                             kernel: tuple[int, int], stride, padding,  # noqa: ANN001
                                             dilation, bh: int, pool: tuple[int, int],  # noqa: ANN001
                                             rows: int) -> None:
    # several pooled output rows per tile (short blocks of an unstructured weight), each its
    # own accumulators: the same values as torch, also where the last group overlaps the one
    # before it
    rng = np.random.default_rng(4)
    weight = _unstructured_weight(o, c, kernel, 0.2, seed=5)
    x = rng.standard_normal((n, c, *hw)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    for relu in (True, False):
        got = _run_kernel(x, weight, bias, (bh, 1), relu, stride, padding, dilation, pool,
                          rows=rows)
        ref = _reference(x, weight, bias, relu, stride, padding, dilation, pool)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_row_groups_stay_on_the_stack() -> None:
    geo = BSRConvGeometry((64, 64, 14, 14), (3, 3), (1, 1), (0, 0), (1, 1), (2, 2))  # 6x6 out
    assert conv_rows(geo, 16) == 1 and conv_rows(geo, 8) == 1  # tall blocks: bh chains already
    assert conv_rows(geo, 1) == 6  # 6 rows x 2 conv rows x 12 lanes = 576 bytes
    for bh in (1, 2, 4):
        v = conv_tile(geo.out_w, bh, 2) * 2
        assert 4 * conv_rows(geo, bh) * 2 * bh * v < STACK_BYTES
    packed = pack_bsr(np.ones((16, 576), np.float32), 4, 1, group=1)
    with pytest.raises(ValueError, match="stack-alloca"):
        bsr_conv2d_kernel(geo, packed, True, rows=6)


def test_conv_blocking_keeps_tall_blocks_and_splits_unstructured_ones() -> None:
    geo = BSRConvGeometry((64, 64, 14, 14), (3, 3), (1, 1), (0, 0), (1, 1), (2, 2))
    # a weight pruned in full 16x1 blocks stores no zeros in them: 16x1 stays
    tall = _block_sparse_weight(128, 64, (3, 3), (16, 1), 0.3, seed=6).reshape(128, -1)
    assert choose_conv_blocking(tall, geo) == (16, 1)
    # 2:4-like density (~11%) spread over the rows: nearly every 16x1 block would be kept
    loose = _unstructured_weight(128, 64, (3, 3), 0.11, seed=7).reshape(128, -1)
    bh, rows = choose_conv_blocking(loose, geo)
    assert bh < 8 and rows == conv_rows(geo, bh) and rows * 2 * bh >= 8
    # a conv with one output row and no pool cannot hide the FMA latency with 1x1 blocks
    flat = BSRConvGeometry((1, 64, 3, 14), (3, 3), (1, 1), (0, 0), (1, 1))
    assert choose_conv_blocking(loose, flat)[0] >= 8
    # an output-channel count no height divides but 1
    odd = _unstructured_weight(7, 4, (3, 3), 0.5, seed=8).reshape(7, -1)
    assert choose_conv_blocking(odd, geo)[0] == 1


def test_kernel_int8_blocks_with_scale_and_zero_weight() -> None:
    rng = np.random.default_rng(2)
    q = _block_sparse_weight(32, 8, (3, 3), (16, 1), 0.3, seed=3)
    q = np.clip(np.round(q * 40), -127, 127).astype(np.int8)
    scale = rng.uniform(0.01, 0.02, 32).astype(np.float32)
    x = rng.standard_normal((2, 8, 9, 9)).astype(np.float32)
    bias = rng.standard_normal(32).astype(np.float32)
    got = _run_kernel(x, q, bias, (16, 1), True, padding=(1, 1), pool=(2, 2), scale=scale)
    dequant = q.astype(np.float32) * scale[:, None, None, None]
    ref = _reference(x, dequant, bias, True, padding=(1, 1), pool=(2, 2))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    zero = np.zeros((16, 4, 3, 3), np.float32)  # no stored block at all: bias only
    got = _run_kernel(x[:, :4], zero, bias[:16], (16, 1), False, padding=(1, 1))
    np.testing.assert_array_equal(got, np.broadcast_to(bias[:16, None, None], got.shape[1:])[None]
                                  .repeat(2, 0))


def test_conv_tile_keeps_accumulators_on_the_stack() -> None:
    # bh * V fp32 under TVM's 1024-byte stack-alloca limit; a narrow output is one tile
    assert conv_tile(32, 16) == 8 and conv_tile(16, 16) == 8 and conv_tile(8, 16) == 8
    assert conv_tile(13, 16) == 13 and conv_tile(4, 16) == 4 and conv_tile(32, 8) == 16
    assert conv_tile(16, 16, pool=2) == 4 and conv_tile(4, 16, pool=2) == 4
    assert conv_tile(17, 16) * 4 * 16 < 1024


def pooled_cnn() -> nn.Sequential:
    """conv -> ReLU -> MaxPool(2) (fused), conv -> MaxPool(2) on an odd 7x7 (fused, floor), conv
    -> MaxPool(3, stride 2, padding 1) (not fusable: overlapping, padded), flatten, linear."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1, dilation=1), nn.MaxPool2d(2),
        nn.Conv2d(32, 16, 1), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1),
        nn.Flatten(), nn.Linear(16 * 2 * 2, 10),
    ).eval()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for conv in (model[0], model[3], model[5]):
            w = conv.weight.view(conv.weight.shape[0], -1)
            keep = torch.rand(w.shape[0] // 16, w.shape[1], generator=gen) >= 0.8
            w.mul_(keep.repeat_interleave(16, 0).float())
    return model


@pytest.mark.parametrize("batch", [1, 3])
def test_max_pool_fused_into_conv_matches_eager(batch: int, tmp_path) -> None:  # noqa: ANN001
    model = pooled_cnn()
    x = torch.randn(batch, 3, 14, 14)
    compiled = get_compiler("tvm").compile(model, x, Target.host(),
                                           CompileOptions(transforms=("block_sparse",),
                                                          cache_dir=tmp_path))
    assert compiled.numerics is not None and compiled.numerics.passed
    for inp in (x, torch.randn(batch, 3, 14, 14)):
        np.testing.assert_allclose(compiled.run(inp).numpy(), model(inp).detach().numpy(),
                                   rtol=1e-5, atol=1e-5)
    assert compiled.notes["hand_kernels"] == ["bsr_conv2d", "bsr_conv2d1", "bsr_conv2d2"]
    main = import_relax(apply_transforms(model, ("block_sparse",)), x)["main"].script()
    assert main.count("R.nn.max_pool2d") == 1  # only the overlapping, padded pool is left


def test_pool_of_a_conv_with_two_consumers_is_not_fused() -> None:
    # to_block_sparse rewrites Sequentials only (one consumer per layer): the op is placed here
    class TwoUsers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            conv = nn.Conv2d(4, 16, 3, padding=1)
            with torch.no_grad():
                conv.weight[:, :2] = 0  # half of the (16 x 1) blocks pruned
            self.conv = BlockSparseConv2d(conv, 16, 1, relu=True)
            self.pool = nn.MaxPool2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.pool(y) + y[:, :, ::2, ::2]

    torch.manual_seed(0)
    model = TwoUsers().eval()
    x = torch.randn(2, 4, 8, 8)
    mod = import_relax(model, x)
    assert mod["main"].script().count("R.nn.max_pool2d") == 1
    api = load()
    vm = api.relax.VirtualMachine(api.tvm.compile(mod, target=to_tvm_target(Target.host())),
                                  api.tvm.cpu(0))
    got = vm["main"](api.tvm.runtime.tensor(x.numpy())).numpy()
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch", [1, 4])
def test_unstructured_conv_builds_with_short_blocks_and_matches_eager(batch: int,
                                                                     tmp_path) -> None:  # noqa: ANN001
    # a conv pruned per weight (like 2:4): block_sparse takes it as 16x1 (38% of the blocks
    # kept), the importer packs it in 1x1 blocks with row groups; the output is unchanged
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(32 * 6 * 6, 10)).eval()
    with torch.no_grad():
        model[0].weight.mul_((torch.rand_like(model[0].weight) < 0.03).float())
    prepared = apply_transforms(model, ("block_sparse",))
    assert isinstance(prepared[0], BlockSparseConv2d) and prepared[0].bh == 16
    x = torch.randn(batch, 16, 14, 14)
    geo = BSRConvGeometry(tuple(x.shape), (3, 3), (1, 1), (0, 0), (1, 1), (2, 2))
    assert choose_conv_blocking(model[0].weight.detach().numpy().reshape(32, -1), geo)[0] < 8
    compiled = get_compiler("tvm").compile(model, x, Target.host(),
                                           CompileOptions(transforms=("block_sparse",),
                                                          cache_dir=tmp_path))
    assert compiled.numerics is not None and compiled.numerics.passed
    assert compiled.notes["hand_kernels"] == ["bsr_conv2d"]
    for inp in (x, torch.randn(batch, 16, 14, 14)):
        np.testing.assert_allclose(compiled.run(inp).numpy(), model(inp).detach().numpy(),
                                   rtol=1e-5, atol=1e-5)
