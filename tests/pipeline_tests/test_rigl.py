"""RigL as a mask option (``mask: rigl``): the schedule, the dense gradient, one hand-checked
rewiring, and a trained task whose mask moved only onto free positions."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.methods import build_method
from pipeline.methods._rigl import RigLMask, _dense_grad, cosine_fraction
from pipeline.models import MaskedConv2d, MaskedLinear, topc_mask
from pipeline.recipe import RigLConfig, TrainConfig, recipe_from_dict
from pipeline.train import train_task
from tests.pipeline_tests._tiny import tiny_mlp, tiny_task


def test_cosine_fraction_decays_from_fraction_to_zero_at_the_end() -> None:
    assert cosine_fraction(0, 0.3, 100) == pytest.approx(0.3)
    assert cosine_fraction(50, 0.3, 100) == pytest.approx(0.15)
    assert cosine_fraction(100, 0.3, 100) == 0.0
    assert cosine_fraction(150, 0.3, 100) == 0.0


@pytest.mark.parametrize("layer", [MaskedLinear(8, 4), MaskedConv2d(2, 3, 3, stride=2, padding=1)])
def test_dense_gradient_equals_autograd(layer: nn.Module) -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 8) if isinstance(layer, MaskedLinear) else torch.randn(5, 2, 7, 7)
    layer.set_mode("dense")
    out = layer(x)
    g = torch.randn_like(out)
    out.backward(g)
    assert torch.allclose(_dense_grad(layer, x, g), layer.weight.grad, atol=1e-5)


def test_rewire_drops_smallest_own_and_grows_largest_free_gradient() -> None:
    # one row of 8: density 0.5 -> mask of 4; positions 0, 1 are held by an earlier task
    layer = MaskedLinear(8, 1)
    with torch.no_grad():
        layer.score.copy_(torch.tensor([[9.0, 1.0, 8.0, 7.0, 6.0, 2.0, 3.0, 0.5]]))
        layer.weight.copy_(torch.tensor([[5.0, 5.0, 0.1, 0.9, 0.5, 4.0, 4.0, 4.0]]))
    held = torch.tensor([[True, True, False, False, False, False, False, False]])
    grad = torch.tensor([[9.0, 9.0, 0.0, 0.0, 0.0, 0.2, 0.7, 0.3]])
    # mask = {0, 2, 3, 4}; own = {2, 3, 4}; free = {5, 6, 7}
    assert topc_mask(layer.score, 0.5).flatten().nonzero().flatten().tolist() == [0, 2, 3, 4]
    rigl = RigLMask(None, RigLConfig(), 0.5)  # type: ignore[arg-type]
    with torch.no_grad():
        swapped = rigl._rewire(layer, grad, held, frac=0.7)  # floor(0.7 x 3) = 2
    assert swapped == 2
    # dropped: the two smallest own |w| (2: 0.1, 4: 0.5); grown: largest free |g| (6, 7)
    assert topc_mask(layer.score, 0.5).flatten().nonzero().flatten().tolist() == [0, 3, 6, 7]
    assert layer.weight[0, 6] == 0.0 and layer.weight[0, 7] == 0.0  # grown start at zero
    assert layer.weight[0, 0] == 5.0 and layer.weight[0, 1] == 5.0  # held never written


def _rigl_recipe(**rigl: float) -> object:
    return recipe_from_dict({"name": "r", "method": {
        "kind": "wsn", "density": 0.5, "mask": "rigl",
        "rigl": {"interval": 1, "fraction": 0.5, "end": 1.0, **rigl}},
        "train": {"batch_size": 16, "epochs": 2}})


def test_a_rigl_task_rewires_only_free_positions_and_leaves_the_held_ones() -> None:
    model = tiny_mlp()
    method = build_method(model, _rigl_recipe())  # type: ignore[arg-type]
    cfg = TrainConfig(lr=0.01, epochs=2, batch_size=16)
    model.add_task(3)
    method.begin_task(0)
    initial = {n: topc_mask(m.score, 0.5) for n, m in model.masked_layers().items()}
    train_task(method, 0, tiny_task(0), cfg)
    first = method.end_task(0)
    assert first.stats["rigl_updates"] > 0 and first.stats["rigl_swapped"] > 0
    assert any(not torch.equal(first.mask[n], initial[n]) for n in initial)  # the mask moved
    held = {n: m.clone() for n, m in method.consolidated.items()}
    weights = {n: m.weight.detach().clone() for n, m in model.masked_layers().items()}
    model.add_task(3)
    method.begin_task(1)
    train_task(method, 1, tiny_task(1), cfg)
    second = method.end_task(1)
    for name, layer in model.masked_layers().items():
        keep = max(1, round(0.5 * layer.weight.numel()))
        assert int(second.mask[name].sum()) == keep  # the density is exact
        assert not (second.own[name] & held[name]).any()  # own positions were free
        assert second.own[name].any()  # a fresh random mask: the task claims free positions
        assert torch.equal(layer.weight[held[name]], weights[name][held[name]])
        assert layer.score.requires_grad  # scores train again after the phase


def test_rigl_stops_after_its_end() -> None:
    model = tiny_mlp()
    method = build_method(model, _rigl_recipe(end=0.1))  # type: ignore[arg-type]
    model.add_task(3)
    method.begin_task(0)
    train_task(method, 0, tiny_task(0), TrainConfig(lr=0.01, epochs=2, batch_size=16))
    # 96 examples / 16 = 6 steps per epoch, 2 epochs: end_step = floor(0.1 x 12) = 1
    assert method.end_task(0).stats["rigl_updates"] == 0
    assert math.isfinite(method.capacity_stats()["union_density"])
