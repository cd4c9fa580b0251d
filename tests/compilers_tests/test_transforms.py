"""Torch-level transforms, BSR packing and realizability: exact, hand-checkable cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from compilers.realizability import LayerSpec, layer_realizability
from compilers.targets import Target
from compilers.transforms import block_density, choose_block_shape, shrink, to_block_sparse
from compilers.tvm.kernels.bsr import pack_bsr

from .conftest import block_sparse_mlp, tiny_cnn


def test_shrink_removes_zero_units_and_consumer_columns() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[0].weight[1] = 0
        model[0].bias[1] = 0
    small = shrink(model)
    assert small[0].weight.shape == (3, 3)
    assert small[2].weight.shape == (2, 3)
    assert torch.equal(small[2].weight, model[2].weight[:, [0, 2, 3]])
    x = torch.randn(5, 3)
    assert torch.allclose(small(x), model(x), atol=1e-6)


def test_shrink_folds_a_constant_unit_into_the_consumer_and_keeps_the_head() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        model[0].weight[1] = 0
        model[0].bias[1] = 0.5  # relu(0.5) = 0.5 for every input: a constant, folded
        model[0].weight[2] = 0
        model[0].bias[2] = -1.0  # relu(-1) = 0: removed with nothing to fold
        model[2].weight[0] = 0
        model[2].bias[0] = 0
    small = shrink(model)
    assert small[0].out_features == 2
    assert torch.equal(small[2].weight, model[2].weight[:, [0, 3]])
    assert torch.equal(small[2].bias, model[2].bias + 0.5 * model[2].weight[:, 1])
    assert small[2].out_features == 2  # the head keeps its outputs
    x = torch.randn(5, 3)
    assert torch.allclose(small(x), model(x), atol=1e-6)


def test_shrink_folds_conv_channels_behind_a_per_task_batchnorm() -> None:
    """A pruned filter followed by an affine BN with running statistics outputs BN(0), not 0:
    the constant goes into the next conv's bias (unpadded) or the linear's (through Flatten)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 2, bias=False), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(),
        nn.Linear(6 * 2 * 2, 3)).eval()
    with torch.no_grad():
        for bn in (model[1], model[5]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 2)
            bn.bias.fill_(0.3)  # > 0: a dead channel's output survives the ReLU
        model[0].weight[1] = 0
        model[4].weight[[2, 5]] = 0
    small = shrink(model)
    assert (small[0].out_channels, small[1].num_features, small[4].in_channels) == (3, 3, 3)
    assert (small[4].out_channels, small[8].in_features) == (4, 4 * 2 * 2)
    assert small[4].bias is not None and small[4].bias.abs().sum() > 0  # the fold
    x = torch.randn(4, 1, 9, 9)
    assert torch.allclose(small(x), model(x), atol=1e-5)
    padded = nn.Sequential(*[model[i] for i in range(4)], nn.Conv2d(4, 2, 3, padding=1),
                           nn.Flatten(), nn.Linear(2 * 9, 2)).eval()
    with torch.no_grad():  # a zero-padded consumer sees 0 at the border, not the constant
        padded[0].weight[1] = 0
    assert shrink(padded)[0].out_channels == 4


def test_shrink_through_conv_bn_pool_flatten() -> None:
    model = tiny_cnn()
    with torch.no_grad():
        model[0].weight[2] = 0
        model[0].bias[2] = 0
    small = shrink(model)
    assert small[0].out_channels == 3
    assert small[1].num_features == 3
    assert small[5].in_features == 3 * 16
    x = torch.randn(2, 1, 8, 8)
    assert torch.allclose(small(x), model(x), atol=1e-5)


def test_shrink_keeps_the_block_grid_of_block_sparse_layers() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 10)).eval()
    with torch.no_grad():
        blocks = torch.rand(4, 32) < 0.25  # 16x1 blocks, a quarter kept
        model[0].weight.mul_(blocks.repeat_interleave(16, dim=0))
        model[0].weight[5] = 0  # a dead unit inside a kept block: rows 0-15 would shift
        model[0].bias[5] = 0
        model[2].weight.mul_((torch.rand(4, 64) < 0.25).repeat_interleave(16, dim=0))
    assert choose_block_shape(model[0].weight) == (16, 1)
    plain = shrink(model)
    assert plain[0].out_features == 63  # no block divides 63: the layer would compile dense
    assert choose_block_shape(plain[0].weight) is None
    kept = shrink(model, keep_blocks=True)
    assert kept[0].out_features == 64 and choose_block_shape(kept[0].weight) == (16, 1)
    assert torch.equal(kept[0].weight, model[0].weight)
    assert not kept[2].weight[:, 5].any()  # the dead unit's inputs are zeroed instead
    assert torch.equal(kept[2].weight[:, [i for i in range(64) if i != 5]],
                       model[2].weight[:, [i for i in range(64) if i != 5]])
    x = torch.randn(7, 32)
    assert torch.equal(kept(x), model(x))
    # a dense producer (no block grid) still loses its dead units
    dense = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    with torch.no_grad():
        dense[0].weight[1] = 0
        dense[0].bias[1] = 0
    assert shrink(dense, keep_blocks=True)[0].out_features == 3


def test_choose_block_shape_prefers_tall_blocks() -> None:
    w = np.zeros((32, 8), np.float32)
    w[0:16, 3] = 1.0  # one 16x1 block
    assert choose_block_shape(w) == (16, 1)
    assert block_density(w, 16, 1) == pytest.approx(1 / 16)
    dense = np.ones((32, 8), np.float32)
    assert choose_block_shape(dense) is None


def test_pack_bsr_is_exact_and_padded_to_group() -> None:
    w = np.zeros((32, 4), np.float32)
    w[0:16, 1] = np.arange(16)
    w[16:32, 0] = 1.0
    w[16:32, 2] = 2.0
    w[16:32, 3] = 3.0
    packed = pack_bsr(w, 16, 1, group=2)
    assert packed.indptr.tolist() == [0, 1, 3]  # row 0: 1 block + 1 pad; row 1: 3 + 1 pad
    assert packed.indices.tolist() == [1, 0, 0, 2, 3, 0]
    assert np.array_equal(packed.data[0, 0], np.arange(16, dtype=np.float32))
    assert not packed.data[1].any() and not packed.data[5].any()


def test_to_block_sparse_rewrites_block_sparse_conv() -> None:
    model = tiny_cnn()
    with torch.no_grad():
        model[0].weight[:, :, 1:] = 0  # 4 filters x 9 taps: 4x1 blocks, 3 of 9 columns kept
    sparse = to_block_sparse(model)
    assert type(sparse[0]).__name__ == "BlockSparseConv2d"
    assert (sparse[0].bh, sparse[0].bw) == (4, 1) and not sparse[0].relu  # BN comes first
    assert type(to_block_sparse(tiny_cnn())[0]) is nn.Conv2d  # dense conv: left alone
    x = torch.randn(2, 1, 8, 8)
    assert torch.equal(sparse(x), model(x))


def test_to_block_sparse_fuses_relu_and_keeps_head_dense() -> None:
    model = to_block_sparse(block_sparse_mlp())
    names = [type(m).__name__ for m in model]
    assert names == ["BlockSparseLinear", "BlockSparseLinear", "Linear"]
    assert model[0].relu and model[1].relu
    x = torch.randn(3, 32)
    assert torch.allclose(model(x), block_sparse_mlp()(x), atol=1e-6)


def test_layer_realizability() -> None:
    host, cuda = Target.host(), Target.cuda()
    blocky = LayerSpec("linear", 2000, 784, sparsity=0.9, pattern="block", block=(16, 1))
    assert layer_realizability(blocky, host) == "speed-realizable"
    assert layer_realizability(blocky, cuda) == "storage-only"
    wide = LayerSpec("linear", 64, 64, 0.9, "block", block=(1, 16))
    assert layer_realizability(wide, host) == "storage-only"
    assert layer_realizability(LayerSpec("linear", 64, 64, 0.9, "unstructured"), host) == (
        "storage-only"
    )
    assert layer_realizability(LayerSpec("conv2d", 64, 64, 0.5, "channel"), cuda) == (
        "speed-realizable"
    )
    # conv blocks (weight viewed as (O, C*kh*kw)) run the direct block-sparse conv kernel on CPU
    conv_blocky = LayerSpec("conv2d", 128, 64 * 9, sparsity=0.9, pattern="block", block=(16, 1))
    assert layer_realizability(conv_blocky, host) == "speed-realizable"
    assert layer_realizability(conv_blocky, Target.aarch64()) == "speed-realizable"
    assert layer_realizability(conv_blocky, cuda) == "storage-only"
    assert layer_realizability(conv_blocky, host, transforms=("shrink",)) == "storage-only"
    grouped = LayerSpec("conv2d", 128, 64 * 9, 0.9, "block", (16, 1), groups=2)
    assert layer_realizability(grouped, host) == "storage-only"  # the conv kernel is groups 1
    dense_conv = LayerSpec("conv2d", 128, 576, 0.3, "block", block=(16, 1))
    assert layer_realizability(dense_conv, host) == (
        "storage-only"  # 70% of blocks kept: above MAX_BLOCK_DENSITY
    )
    assert layer_realizability(LayerSpec("conv2d", 128, 576, 0.9, "unstructured"), host) == (
        "storage-only"
    )
    # a label follows the target's transforms: without block_sparse no kernel, with int8 the
    # linear layers stored at <= 8 bits read int8 weights
    assert layer_realizability(blocky, host, transforms=("shrink",)) == "storage-only"
    dense8 = LayerSpec("linear", 64, 64, 0.5, "unstructured", bits=8)
    assert layer_realizability(dense8, host) == "storage-only"
    assert layer_realizability(dense8, host, transforms=("int8",)) == "speed-realizable"
    assert layer_realizability(dense8, cuda, transforms=("int8",)) == "storage-only"
    wide = LayerSpec("linear", 64, 64, 0.5, "unstructured", bits=16)
    assert layer_realizability(wide, host, transforms=("int8",)) == "storage-only"


def test_rpc_target_requires_address() -> None:
    with pytest.raises(ValueError, match="rpc_host"):
        Target(name="x", kind="rpc")
