"""A task's plain module computes exactly what the committed snapshot computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.evaluation import snapshot_logits
from pipeline.methods import WSN
from pipeline.models import build_model
from pipeline.recipe import ModelConfig, TrainConfig, WSNMethod
from pipeline.subnet import task_module
from pipeline.train import train_task
from tests.pipeline_tests._tiny import tiny_mlp, tiny_task


@pytest.mark.parametrize("norm", ["none", "stateless", "per_task"])
def test_plain_sequential_matches_snapshot(norm: str) -> None:
    model = tiny_mlp(norm=norm)
    method = WSN(model, WSNMethod(density=0.5))
    for t in range(2):
        task = tiny_task(t)
        model.add_task(task.num_classes)
        train_task(method, t, task, TrainConfig(lr=0.01, epochs=1, batch_size=16))
        method.end_task(t)
    x = torch.randn(12, 1, 1, 8)
    for t in range(2):
        snap = method.snapshot(t)
        module = task_module(model, snap, t)
        assert isinstance(module, nn.Sequential)
        assert all(type(m) in (nn.Flatten, nn.Linear, nn.ReLU, nn.Identity, nn.BatchNorm1d)
                   for m in module)
        with torch.no_grad():
            assert torch.allclose(module(x), snapshot_logits(model, snap, t, x, 12), atol=1e-6)


def test_resnet_is_wrapped_whole() -> None:
    model = build_model(ModelConfig(arch="resnet18", width=4, norm="stateless"), (3, 32, 32))
    model.add_task(5)
    method = WSN(model, WSNMethod(density=0.5))
    method.begin_task(0)
    method.end_task(0)
    snap = method.snapshot(0)
    module = task_module(model, snap, 0)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(module(x), snapshot_logits(model, snap, 0, x, 3), atol=1e-6)
