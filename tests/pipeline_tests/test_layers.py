"""Masked layers: exact top-c masks, the fast k-th value, straight-through gradients, archs."""

from __future__ import annotations

import pytest
import torch

from pipeline.models import MaskedLinear, build_model, kth_largest_radix, kth_smallest, topc_mask
from pipeline.recipe import ModelConfig


@pytest.mark.parametrize("k", [1, 2, 1000, 250_000, 499_999, 500_000])
def test_kth_smallest_is_exact_on_large_tensors(k: int) -> None:
    x = torch.randn(500_000, generator=torch.Generator().manual_seed(k)).abs()
    assert torch.equal(kth_smallest(x, k), x.kthvalue(k).values)


def test_kth_smallest_with_heavy_ties_and_bad_k() -> None:
    x = torch.randint(0, 3, (400_000,), generator=torch.Generator().manual_seed(0)).float()
    for k in (1, 133_000, 266_667, 400_000):
        assert torch.equal(kth_smallest(x, k), x.kthvalue(k).values)
    with pytest.raises(ValueError, match=r"`1 <= k <= n` must hold, but got \(k=0, n=400000\)"):
        kth_smallest(x, 0)


@pytest.mark.parametrize("values", ["uniform", "ties", "tiny", "zeros", "one"])
def test_radix_select_matches_kthvalue(values: str) -> None:
    # the GPU path of topc_mask; exact on any device, so it is checked here on the CPU
    g = torch.Generator().manual_seed(3)
    n = 1 if values == "one" else 300_001
    x = {"uniform": lambda: torch.rand(n, generator=g),
         "ties": lambda: torch.randint(0, 7, (n,), generator=g).float(),
         "tiny": lambda: torch.rand(n, generator=g) * 1e-38,  # subnormals
         "zeros": lambda: torch.zeros(n),
         "one": lambda: torch.tensor([0.25])}[values]()
    for k in sorted({1, n, max(1, n // 7), max(1, n // 2)}):
        got = kth_largest_radix(x, k)
        assert got.shape == (1,) and got.item() == x.kthvalue(n - k + 1).values.item()
        assert int((x >= got).sum()) >= k
    with pytest.raises(ValueError):
        kth_largest_radix(x, n + 1)


def test_topc_mask_on_a_hand_made_4x8_layer() -> None:
    scores = torch.tensor([[0.1, -0.9, 0.3, 0.0, 0.5, -0.2, 0.8, 0.05],
                           [-0.6, 0.7, 0.15, -0.35, 0.25, 0.4, -0.45, 0.55],
                           [0.01, 0.02, -0.03, 0.04, 0.06, -0.07, 0.08, 0.09],
                           [1.0, -1.1, 1.2, -1.3, 0.65, 0.75, -0.85, 0.95]])
    # 25% of 32 = 8 largest |score|: 1.3, 1.2, 1.1, 1.0, 0.95, 0.9, 0.85, 0.8
    expected = torch.zeros(4, 8, dtype=torch.bool)
    expected[3, [0, 1, 2, 3, 6, 7]] = True
    expected[0, [1, 6]] = True
    assert torch.equal(topc_mask(scores, 0.25), expected)
    assert topc_mask(scores, 1.0).all()
    assert int(topc_mask(scores, 0.01).sum()) == 1  # never an empty mask
    with pytest.raises(ValueError, match="`0 < density <= 1` must hold"):
        topc_mask(scores, 0.0)


def test_straight_through_gradient() -> None:
    torch.manual_seed(0)
    layer = MaskedLinear(8, 4)
    layer.set_mode("scores", density=0.5)
    x = torch.randn(5, 8)
    layer(x).sum().backward()
    mask = topc_mask(layer.score, 0.5).float()
    grad_eff = torch.ones(5, 4).t() @ x  # d(sum(x W^T))/dW_eff
    assert torch.allclose(layer.weight.grad, grad_eff * mask)
    assert torch.allclose(layer.score.grad, grad_eff * layer.weight.detach()
                          * torch.sign(layer.score.detach()))


def test_mask_and_dense_modes() -> None:
    layer = MaskedLinear(4, 2)
    mask = torch.tensor([[1, 0, 0, 1], [0, 1, 1, 0]], dtype=torch.bool)
    layer.set_mode("mask", mask=mask)
    x = torch.randn(3, 4)
    assert torch.equal(layer(x), x @ (layer.weight * mask).t())
    layer.set_mode("dense")
    assert torch.equal(layer(x), x @ layer.weight.t())
    with pytest.raises(ValueError, match="needs a mask"):
        layer.set_mode("mask")


@pytest.mark.parametrize(
    ("cfg", "shape", "prunable", "feature_dim"),
    [
        (ModelConfig(arch="mlp", hidden=[2000, 2000]), (1, 28, 28), 5_568_000, 2000),
        (ModelConfig(arch="alexnet", norm="stateless", dropout=0.5), (3, 32, 32), 6_499_328,
         2048),
        (ModelConfig(arch="tinynet", norm="per_task"), (3, 64, 64), 2_743_520, 640),
        (ModelConfig(arch="resnet18", width=20, norm="stateless"), (3, 32, 32), 1_090_140, 640),
    ],
    ids=["mlp", "alexnet", "tinynet", "resnet18"],
)
def test_architectures_match_the_papers(cfg: ModelConfig, shape: tuple, prunable: int,
                                        feature_dim: int) -> None:
    model = build_model(cfg, shape)
    assert model.num_prunable() == prunable
    assert model.feature_dim == feature_dim
    t = model.add_task(7)
    assert model(torch.randn(2, *shape), t).shape == (2, 7)
    # no shared biases anywhere in the backbone: they would drift across tasks
    assert all(getattr(m, "bias", None) is None for m in model.masked_layers().values())
