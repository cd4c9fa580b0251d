"""The search's latency function on real TVM builds: structure cache and tuning-database stats."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.recipe import TargetConfig
from search._latency import compiled_latency


def _mlp(seed: int, zero: slice) -> nn.Sequential:
    """16-32-4 with the hidden units in ``zero`` switched off (shrink removes them)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()
    with torch.no_grad():
        model[0].weight[zero] = 0
        model[0].bias[zero] = 0
    return model


@pytest.mark.tvm
def test_latency_is_cached_by_structure_and_counts_tuning_hits(tmp_path: Path) -> None:
    target = TargetConfig(name="host", backend="tvm", tune_trials=1, transforms=["shrink"])
    latency = compiled_latency(target, tmp_path)
    x = torch.randn(1, 16)
    first = latency(_mlp(0, slice(0, 8)), x)
    assert not first.cached and first.tuned and first.median_ms > 0
    assert first.workloads == 2 and first.workloads_tuned == 2  # 16->24 and 24->4, both new
    # other weights, same structure: the latency comes from the cache, nothing is compiled
    again = latency(_mlp(1, slice(0, 8)), x)
    assert again.cached and again.median_ms == first.median_ms and again.seconds == 0.0
    # another structure with the same shapes after shrink, in a fresh latency function (as after
    # a restart): compiled and measured, but both workloads come from the tuning database
    other = compiled_latency(target, tmp_path)(_mlp(2, slice(24, 32)), x)
    assert not other.cached and other.workloads == 2 and other.workloads_tuned == 0


def test_eager_latency_uses_the_target_transforms_and_threads(tmp_path: Path,
                                                               monkeypatch) -> None:  # noqa: ANN001
    """One transform path for every backend; the target's runtime threads reach the measurement."""
    import compilers

    seen = []
    real = compilers.measure

    def spy(compiled, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        m = real(compiled, *args, min_repeats=2, max_repeats=3, min_sample_ms=1.0)
        seen.append((compiled.transforms, m.threads))
        return m

    monkeypatch.setattr(compilers, "measure", spy)
    target = TargetConfig(name="host", backend="eager", transforms=["shrink", "int8"], threads=1)
    result = compiled_latency(target, tmp_path)(_mlp(0, slice(0, 8)), torch.randn(1, 16))
    assert result.median_ms > 0 and not result.cached
    assert seen == [(("shrink", "int8"), 1)]


def test_conv_labels_are_storage_only_where_shape_transforms_cannot_apply() -> None:
    """Conv patterns on a chain (AlexNet-like) are realized by block_sparse / shrink; on the
    reduced ResNet (not a chain) the same plans run dense, and the labels say so."""
    from pipeline.models import build_model
    from pipeline.recipe import LayerPlan, ModelConfig
    from pipeline.subnet import is_chain
    from search._latency import realizability_labels

    target = TargetConfig(name="host", backend="tvm", transforms=["shrink", "block_sparse",
                                                                  "int8"])
    alex = build_model(ModelConfig(arch="alexnet", alexnet_widths=[16, 32, 64, 32, 32]),
                       (1, 32, 32))
    resnet = build_model(ModelConfig(arch="resnet18", width=16), (1, 32, 32))
    assert is_chain(alex) and not is_chain(resnet)
    plans = {"block": LayerPlan(sparsity=0.75, pattern="block(16,1)", bits=8),
             "channel": LayerPlan(sparsity=0.25, pattern="channel", bits=8),
             "nm": LayerPlan(sparsity=0.5, pattern="2:4", bits=8)}
    conv = (32, 16, 3, 3)  # viewed as (32, 144): 16x1 blocks fit
    shapes = dict.fromkeys(plans, conv)
    labels = realizability_labels(target, shapes, chain=is_chain(alex))(plans)
    assert labels == {"block": "speed-realizable", "channel": "speed-realizable",
                      "nm": "storage-only"}
    labels = realizability_labels(target, dict.fromkeys(plans, conv),
                                  chain=is_chain(resnet))(plans)
    assert set(labels.values()) == {"storage-only"}
    fc = realizability_labels(target, {"block": (32, 64)}, chain=False)(
        {"block": plans["block"]})
    assert fc == {"block": "speed-realizable"}  # int8 rewrites linears anywhere
