"""The fused masked-weight node and its C kernels: bit-identical to the plain torch ops they
replace (the straight-through top-c mask, ``w * m``, the gradient gate), in every mode, on both
the C path and the torch path; the exact k-th largest |score|; the build cache and its
fallback."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch

from pipeline.models import MaskedConv2d, MaskedLinear, _native, kth_smallest, topc_mask
from pipeline.models._fused import masked_weight


class _StraightThrough(torch.autograd.Function):
    """The reference: the top-c mask as floats, gradient passed to |score| unchanged (WSN)."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, density: float) -> torch.Tensor:  # type: ignore[override]
        return topc_mask(a, density).to(a.dtype)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return g, None


def _reference(w: torch.Tensor, s: torch.Tensor, mode: str, density: float,
               mask: torch.Tensor | None) -> torch.Tensor:
    if mode == "scores":
        return w * _StraightThrough.apply(s.abs(), density)
    if mode == "mask":
        assert mask is not None
        return w * mask
    return w


@pytest.fixture(params=["fused", "torch"])
def kernels(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if request.param == "torch":
        monkeypatch.setenv("TASKPACK_KERNELS", "torch")
    else:
        monkeypatch.delenv("TASKPACK_KERNELS", raising=False)
        if _native.library() is None:
            pytest.skip("no C compiler here: the fused kernels cannot be built")
    yield request.param


@pytest.mark.parametrize("mode", ["scores", "mask", "dense"])
@pytest.mark.parametrize("shape", [(300, 900), (16, 3, 3, 3), (9, 6)],
                         ids=["linear-270k", "conv", "tiny"])
@pytest.mark.parametrize("gate", [True, False], ids=["frozen", "no-frozen"])
def test_masked_weight_is_bit_identical_to_the_torch_ops(kernels: str, mode: str,
                                                         shape: tuple[int, ...],
                                                         gate: bool) -> None:
    g = torch.Generator().manual_seed(len(shape) * 7 + shape[0])
    w = torch.randn(shape, generator=g).requires_grad_()
    s = torch.randn(shape, generator=g)
    s.view(-1)[:5] = 0.0  # zero scores: sign 0
    s.view(-1)[5:40] = s.view(-1)[40]  # ties at random values
    s.requires_grad_()
    mask = torch.rand(shape, generator=g) < 0.4
    frozen = (torch.rand(shape, generator=g) < 0.3) if gate else None
    upstream = torch.randn(shape, generator=g)

    ref = _reference(w, s, mode, 0.3, mask)
    (ref * upstream).sum().backward()
    ref_w, ref_s = w.grad.clone(), s.grad  # type: ignore[union-attr]
    if frozen is not None:
        ref_w.masked_fill_(frozen, 0.0)
    w.grad = s.grad = None

    got = masked_weight(w, s if mode == "scores" else None, 0.3 if mode == "scores" else None,
                        mask if mode == "mask" else None, frozen)
    if mode == "dense" and frozen is None:
        return  # the layer uses its weight directly; nothing to compare
    (got * upstream).sum().backward()
    assert torch.equal(got, ref)
    assert torch.equal(w.grad, ref_w)
    assert (s.grad is None) == (ref_s is None)
    if ref_s is not None:
        assert torch.equal(s.grad, ref_s)


def test_no_gradient_is_computed_for_tensors_that_do_not_want_one(kernels: str) -> None:
    w = torch.randn(50, 60)  # frozen weights (ExSSNeT's mask phase, SupSup)
    s = torch.randn(50, 60, requires_grad=True)
    masked_weight(w, s, 0.5, None, None).sum().backward()
    assert w.grad is None
    expected = w * s.detach().sign()  # upstream 1: (1 * w) * sign(s)
    assert torch.equal(s.grad, expected)  # type: ignore[arg-type]


@pytest.mark.parametrize("layer_cls", [MaskedLinear, MaskedConv2d])
def test_layer_with_frozen_positions_trains_only_the_rest(kernels: str,
                                                          layer_cls: type) -> None:
    torch.manual_seed(0)
    layer = MaskedLinear(30, 20) if layer_cls is MaskedLinear else MaskedConv2d(3, 8, 3)
    x = torch.randn(4, 30) if layer_cls is MaskedLinear else torch.randn(4, 3, 8, 8)
    frozen = torch.rand_like(layer.weight) < 0.5
    layer.set_mode("scores", density=0.6)
    layer.frozen = frozen
    layer(x).square().sum().backward()
    assert layer.weight.grad is not None
    assert not layer.weight.grad[frozen].any()
    mask = topc_mask(layer.score, 0.6)
    assert layer.weight.grad[mask & ~frozen].abs().sum() > 0
    assert not layer.weight.grad[~mask].any()


@pytest.mark.parametrize("values", ["normal", "ties", "tiny", "wide", "zeros"])
@pytest.mark.parametrize("threads", [1, 2])
def test_fused_kth_largest_abs_is_exact(values: str, threads: int) -> None:
    lib = _native.library()
    if lib is None:
        pytest.skip("no C compiler here: the fused kernels cannot be built")
    g = torch.Generator().manual_seed(11)
    n = 300_007  # above the size where the kernel splits work over threads
    x = {"normal": lambda: torch.randn(n, generator=g),
         "ties": lambda: torch.randint(-4, 5, (n,), generator=g).float(),
         "tiny": lambda: torch.randn(n, generator=g) * 1e-39,  # subnormals
         "wide": lambda: torch.randn(n, generator=g) * torch.exp(10 * torch.randn(n, generator=g)),
         "zeros": lambda: torch.zeros(n)}[values]()
    a = x.abs()
    for k in sorted({1, 2, n // 3, n // 2, n - 1, n}):
        got = lib.tp_kth_largest_abs(x.data_ptr(), n, k, threads)
        assert got == kth_smallest(a, n - k + 1).item(), k


def test_the_library_is_cached_and_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    if _native.library() is None:
        pytest.skip("no C compiler here: the fused kernels cannot be built")
    built = sorted(_native.kernels_dir().glob("masked-*.so"))
    assert built, "the library is cached in kernels_dir()"
    assert _native.kernel_name() == "fused-c"
    monkeypatch.setenv("TASKPACK_KERNELS", "torch")
    assert _native.library() is None and _native.kernel_name() == "torch"


def test_a_failed_build_falls_back_to_torch_with_one_warning(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setattr(_native, "_LIB", _native._UNSET)
    with caplog.at_level(logging.WARNING, logger="pipeline.models._native"):
        assert _native.library() is None
        assert _native.library() is None  # tried once per process
    assert len(caplog.records) == 1 and "torch ops" in caplog.records[0].getMessage()
    layer = MaskedLinear(6, 4)
    layer.set_mode("scores", density=0.5)
    layer(torch.randn(2, 6)).sum().backward()  # trains on the torch path
    assert layer.score.grad is not None


@pytest.mark.parametrize("values", ["normal", "ties", "wide"])
def test_threshold_near_the_last_one_is_exact_or_says_it_missed(values: str) -> None:
    if _native.library() is None:
        pytest.skip("no C compiler here: the fused kernels cannot be built")
    g = torch.Generator().manual_seed(5)
    n = 270_001
    x = {"normal": lambda: torch.randn(n, generator=g),
         "ties": lambda: torch.randint(-4, 5, (n,), generator=g).float(),
         "wide": lambda: torch.randn(n, generator=g) * torch.exp(10 * torch.randn(n, generator=g)),
         }[values]()
    a = x.abs()
    for k in (1, n // 5, n // 2, n):
        exact = kth_smallest(a, n - k + 1).item()
        found = [_native.kth_largest_abs(x, k, near=band) for band in
                 [(exact, exact), (0.99 * exact, 1.01 * exact), (0.0, 2 * exact + 1)]]
        # exact, or None when the band holds too many values (> n / 8) to be worth it
        assert all(v in (exact, None) for v in found)
        if values == "normal":
            assert found[:2] == [exact, exact]
        # a band that misses the answer, on either side
        assert _native.kth_largest_abs(x, k, near=(2 * exact + 1, 3 * exact + 2)) is None
        if exact > 0:
            assert _native.kth_largest_abs(x, k, near=(0.0, 0.5 * exact)) is None


def test_a_layer_keeps_finding_the_exact_mask_while_its_scores_move(kernels: str) -> None:
    torch.manual_seed(0)
    layer = MaskedLinear(600, 500)  # 300k scores: the kernels split the work
    layer.set_mode("scores", density=0.15)
    opt = torch.optim.Adam([layer.weight, layer.score], lr=1e-2)
    for step in range(12):
        x = torch.randn(8, 600)
        expected = topc_mask(layer.score, 0.15)
        out = layer(x)
        assert torch.equal(layer.effective_weight().detach() != 0,
                           expected & (layer.weight.detach() != 0)), step
        opt.zero_grad()
        out.square().mean().backward()
        opt.step()
    if kernels == "fused":
        assert layer.hint.hits > 0 and layer.hint.t is not None


def test_tensors_the_kernels_cannot_read_take_the_torch_path(kernels: str) -> None:
    # a float mask, a float64 weight, a non-contiguous weight: the C code reads only
    # contiguous float32 and bool; anything else must not reach it
    g = torch.Generator().manual_seed(2)
    w = torch.randn(40, 30, generator=g)
    mask = (torch.rand(40, 30, generator=g) < 0.5)
    assert torch.equal(masked_weight(w, None, None, mask.float(), None), w * mask)
    assert torch.equal(masked_weight(w.double(), None, None, mask, None), w.double() * mask)
    wt = torch.randn(30, 40, generator=g).t()
    assert torch.equal(masked_weight(wt, None, None, mask, None), wt * mask)
