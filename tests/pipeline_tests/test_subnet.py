"""A task's plain module computes exactly what the committed snapshot computes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pipeline.evaluation import snapshot_logits
from pipeline.methods import WSN
from pipeline.models import build_model
from pipeline.recipe import ModelConfig, TrainConfig, WSNMethod
from pipeline.subnet import fold_batchnorm, task_module
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
        # the inference chain: no identities, a per-task BN folded into the linear before it
        kinds = (nn.Flatten, nn.Linear, nn.ReLU) + ((nn.BatchNorm1d,) if norm == "stateless"
                                                   else ())
        assert all(type(m) in kinds for m in module)
        with torch.no_grad():
            assert torch.allclose(module(x), snapshot_logits(model, snap, t, x, 12), atol=1e-5)


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


@pytest.mark.parametrize("bias", [False, True])
def test_fold_batchnorm_matches_the_layer_then_its_norm(bias: bool) -> None:
    torch.manual_seed(0)
    for layer, bn, x in (
        (nn.Conv2d(3, 8, 3, padding=1, bias=bias), nn.BatchNorm2d(8), torch.randn(2, 3, 6, 6)),
        (nn.Linear(5, 4, bias=bias), nn.BatchNorm1d(4), torch.randn(3, 5)),
    ):
        with torch.no_grad():  # trained-looking statistics and affine parameters
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(-2, 2)
            bn.bias.uniform_(-1, 1)
            layer.weight[0] = 0  # a dead unit stays dead: its weights stay zero
        folded = fold_batchnorm(layer, bn.eval())
        assert folded.bias is not None and bool((folded.weight[0] == 0).all())
        with torch.no_grad():
            torch.testing.assert_close(folded(x), bn(layer(x)), rtol=1e-5, atol=1e-5)
        assert layer.bias is None or layer.bias is not folded.bias  # the input layer is untouched
