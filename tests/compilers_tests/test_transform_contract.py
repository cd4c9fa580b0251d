"""Contract tests for registered ``Transform``s (Before/Expected style).

``TransformContract`` applies one transform (through ``apply_transforms``, the one entry point)
to a tiny hand-written module and compares the result exactly with a hand-written expected
module; it also checks idempotence, that the output stays within tolerance of the untransformed
module, and that the reference form (``kernels=False``) has the kernel form's layer shapes. A new
transform is tested by one subclass with ``before`` / ``expected``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from compilers import apply_transforms, transform_names
from compilers.ops import BlockSparseLinear, CSRLinear, Int8Linear
from compilers.transforms import get_transform


def _linear(out: int, inp: int, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(inp, out)


def assert_same_module(got: nn.Module, want: nn.Module) -> None:
    """Same layer types in the same places, same extra attributes, bit-equal tensors."""
    assert [(n, type(m).__name__, m.extra_repr()) for n, m in got.named_modules()] == \
        [(n, type(m).__name__, m.extra_repr()) for n, m in want.named_modules()]
    g, w = got.state_dict(), want.state_dict()
    assert list(g) == list(w)
    for key in g:
        assert g[key].dtype == w[key].dtype and torch.equal(g[key], w[key]), key


def _shapes(module: nn.Module) -> list[tuple[int, ...]]:
    return sorted(tuple(t.shape) for t in module.state_dict().values() if t.dim() >= 1)


class TransformContract:
    name = ""
    rtol = 1e-6  # output of the transformed vs the untransformed module

    def before(self) -> nn.Module:
        raise NotImplementedError

    def expected(self) -> nn.Module:
        raise NotImplementedError

    def example(self) -> torch.Tensor:
        return torch.randn(3, self.before()[0].in_features,
                           generator=torch.Generator().manual_seed(7))

    def test_registered(self) -> None:
        assert self.name in transform_names()
        assert get_transform(self.name).name == self.name

    def test_apply_gives_expected(self) -> None:
        before = self.before()
        snapshot = copy.deepcopy(before.state_dict())
        got = apply_transforms(before, (self.name,))
        assert_same_module(got, self.expected().eval())
        assert all(torch.equal(v, snapshot[k]) for k, v in before.state_dict().items())

    def test_idempotent(self) -> None:
        once = apply_transforms(self.before(), (self.name,))
        assert_same_module(apply_transforms(once, (self.name,)), once)

    @torch.no_grad()
    def test_output_close_to_untransformed(self) -> None:
        before, x = self.before(), self.example()
        ref = before(x)
        for kernels in (True, False):
            out = apply_transforms(before, (self.name,), kernels=kernels)(x)
            err = float((out - ref).abs().max()) / float(ref.abs().max())
            assert err <= self.rtol, (kernels, err)

    @torch.no_grad()
    def test_reference_form_has_the_kernel_form_shapes(self) -> None:
        before, x = self.before(), self.example()
        kernel = apply_transforms(before, (self.name,))
        reference = apply_transforms(before, (self.name,), kernels=False)
        linears = [m for m in reference.modules() if isinstance(m, nn.Linear)]
        assert [tuple(m.weight.shape) for m in linears] == [
            tuple(getattr(m, "weight", getattr(m, "qweight", None)).shape)
            for m in kernel.modules()
            if isinstance(m, nn.Linear | BlockSparseLinear | Int8Linear | CSRLinear)
        ]
        torch.testing.assert_close(kernel(x), reference(x), rtol=1e-6, atol=1e-6)


class TestShrink(TransformContract):
    """Unit 1 of the first layer is dead: it goes, with the consumer's input column 1."""

    name = "shrink"

    def before(self) -> nn.Module:
        first, head = _linear(3, 4, 0), _linear(2, 3, 1)
        with torch.no_grad():
            first.weight[1] = 0
            first.bias[1] = 0
        return nn.Sequential(first, nn.ReLU(), head).eval()

    def expected(self) -> nn.Module:
        first, _, head = self.before()
        keep = torch.tensor([0, 2])
        small, small_head = nn.Linear(4, 2), nn.Linear(2, 2)
        with torch.no_grad():
            small.weight.copy_(first.weight[keep])
            small.bias.copy_(first.bias[keep])
            small_head.weight.copy_(head.weight[:, keep])
            small_head.bias.copy_(head.bias)
        return nn.Sequential(small, nn.ReLU(), small_head)


class TestBlockSparse(TransformContract):
    """A 16x8 layer with two nonzero 16x1 block columns -> the BSR op (ReLU fused); head dense."""

    name = "block_sparse"

    def before(self) -> nn.Module:
        hidden, head = _linear(16, 8, 0), _linear(4, 16, 1)
        with torch.no_grad():
            mask = torch.zeros(16, 8)
            mask[:, [0, 3]] = 1
            hidden.weight.mul_(mask)
        return nn.Sequential(hidden, nn.ReLU(), head).eval()

    def expected(self) -> nn.Module:
        hidden, _, head = self.before()
        return nn.Sequential(BlockSparseLinear(hidden, 16, 1, relu=True), copy.deepcopy(head))


class TestCSRSparse(TransformContract):
    """A 16x8 layer with 10% unstructured nonzeros -> the CSR op (ReLU fused); a 50% dense layer
    and the head stay dense."""

    name = "csr_sparse"

    def before(self) -> nn.Module:
        sparse, half, head = _linear(16, 8, 0), _linear(16, 16, 2), _linear(4, 16, 1)
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            keep = torch.rand(16, 8, generator=gen) < 0.1
            sparse.weight.mul_(keep.float())
            half.weight[:, ::2] = 0
        return nn.Sequential(sparse, nn.ReLU(), half, nn.ReLU(), head).eval()

    def expected(self) -> nn.Module:
        sparse, _, half, relu, head = self.before()
        return nn.Sequential(CSRLinear(sparse, relu=True), copy.deepcopy(half), nn.ReLU(),
                             copy.deepcopy(head))

    def test_block_sparse_layers_keep_the_bsr_kernel(self) -> None:
        from .conftest import block_sparse_mlp

        both = apply_transforms(block_sparse_mlp(), ("block_sparse", "csr_sparse"))
        assert [type(m).__name__ for m in both] == [
            "BlockSparseLinear", "BlockSparseLinear", "Linear"]


class TestInt8(TransformContract):
    """Every linear -> Int8Linear (per-row symmetric codes), the ReLU fused into the first."""

    name = "int8"
    rtol = 2e-2  # int8 changes the numbers (changes_numerics); this is its accuracy cost

    def before(self) -> nn.Module:
        return nn.Sequential(_linear(4, 4, 0), nn.ReLU(), _linear(2, 4, 1)).eval()

    def expected(self) -> nn.Module:
        first, _, head = self.before()
        return nn.Sequential(Int8Linear(first, relu=True), Int8Linear(head))

    def test_changes_numerics_flag(self) -> None:
        assert get_transform("int8").changes_numerics
        assert not get_transform("shrink").changes_numerics


def test_every_registered_transform_has_a_contract_subclass() -> None:
    covered = {cls.name for cls in TransformContract.__subclasses__()}
    assert set(transform_names()) <= covered


def test_canonical_order_and_keep_blocks_rule() -> None:
    """Listed in any order, shrink runs first and keeps block-sparse layers' shapes."""
    from .conftest import block_sparse_mlp

    model = block_sparse_mlp()  # layer 2 has 16 dead units, in 16x1 blocks
    a = apply_transforms(model, ("block_sparse", "shrink"))
    b = apply_transforms(model, ("shrink", "block_sparse"))
    assert_same_module(a, b)
    assert a[1].weight.shape == (64, 64)  # kept for the block grid, not shrunk to 48
    assert apply_transforms(model, ("shrink",))[2].weight.shape == (48, 64)
    with pytest.raises(ValueError, match="transforms must be a subset"):
        apply_transforms(model, ("nope",))
