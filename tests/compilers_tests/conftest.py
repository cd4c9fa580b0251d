"""Tiny in-code models shared by the compilers tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def block_sparse_mlp(seed: int = 0, hidden: int = 64, zero_units: int = 16) -> nn.Sequential:
    """MLP 32-hidden-hidden-10 with 16x1 blocks (75% dropped) and `zero_units` dead neurons."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(32, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, 10),
    ).eval()
    with torch.no_grad():
        for layer in (model[0], model[2]):
            out, inp = layer.weight.shape
            keep = torch.rand(out // 16, inp, generator=gen) < 0.25
            layer.weight.mul_(keep.repeat_interleave(16, 0).float())
        model[2].weight[:zero_units] = 0
        model[2].bias[:zero_units] = 0
    return model


def tiny_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4, affine=False, track_running_stats=False),
        nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 10),
    ).eval()


@pytest.fixture
def mlp() -> nn.Sequential:
    return block_sparse_mlp()


@pytest.fixture
def cache_dir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.getbasetemp() / "tvm-cache"
