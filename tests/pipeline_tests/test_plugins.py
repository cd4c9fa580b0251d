"""Training-efficiency plugins (``train.plugins``): a contract every registered plugin passes
(forgetting stays at zero, its figures are reported), and per plugin a test that it does its
thing; the analytic cost model checked by hand on a tiny MLP."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from pipeline.evaluation import snapshot_logits
from pipeline.methods import WSN, build_method
from pipeline.plugins import DataRemoval, DataSieving, GradientMasking, TrainPlugin, plugin_class
from pipeline.recipe import TrainConfig, recipe_from_dict
from pipeline.runner import run_recipe
from pipeline.session import TrainReport
from pipeline.tracking import NoopTracker
from pipeline.train import train_task
from tests.pipeline_tests._tiny import tiny_mlp, tiny_task

_METHODS = {
    "wsn": {"kind": "wsn", "density": 0.5},
    "wsn-rigl": {"kind": "wsn", "density": 0.5, "mask": "rigl", "rigl": {"interval": 2}},
    "exssnet": {"kind": "exssnet", "density": 0.5, "mask_epochs": 2, "weight_epochs": 2},
}


def _train(method_section: dict[str, Any], plugins: list[dict[str, Any]], tasks: int = 1,
           epochs: int = 2) -> tuple[WSN, list[TrainReport]]:
    model = tiny_mlp()
    method = build_method(model, recipe_from_dict({"name": "p", "method": method_section}))
    cfg = TrainConfig(lr=0.01, epochs=epochs, batch_size=16, plugins=plugins)  # type: ignore[arg-type]
    reports = []
    for t in range(tasks):
        model.add_task(3)
        method.begin_task(t)
        reports.append(train_task(method, t, tiny_task(t), cfg))
        method.end_task(t)
    assert isinstance(method, WSN)
    return method, reports


class PluginContract:
    """Subclass with ``plugin`` (one ``train.plugins`` entry) to test a plugin."""

    plugin: ClassVar[dict[str, Any]]

    def test_kind_is_registered_and_validates(self) -> None:
        cfg = TrainConfig(plugins=[self.plugin])  # type: ignore[list-item]
        assert cfg.plugins[0].kind == self.plugin["kind"]
        assert issubclass(plugin_class(self.plugin["kind"]), TrainPlugin)

    @pytest.mark.parametrize("method", sorted(_METHODS))
    def test_earlier_task_logits_stay_bit_identical(self, method: str) -> None:
        model = tiny_mlp()
        wsn = build_method(model, recipe_from_dict({"name": "p", "method": _METHODS[method]}))
        assert isinstance(wsn, WSN)
        cfg = TrainConfig(lr=0.01, epochs=2, batch_size=16,
                          plugins=[self.plugin])  # type: ignore[list-item]
        x = tiny_task(0).test.x
        logits, reports = [], []
        for t in range(3):
            model.add_task(3)
            wsn.begin_task(t)
            reports.append(train_task(wsn, t, tiny_task(t), cfg))
            wsn.end_task(t)
            logits.append(snapshot_logits(model, wsn.snapshot(0), 0, x, 32))
            # frozen positions keep their requires_grad: every tensor trains again next task
            assert all(p.requires_grad for p in model.parameters())
        assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])
        for report in reports:
            assert report.stats["examples_seen"] > 0 and report.stats["backward_flops"] > 0
            assert any(k.startswith(f"{self.plugin['kind']}/") for k in report.stats)


class TestDataRemoval(PluginContract):
    plugin = {"kind": "data_removal", "fraction": 0.5, "at_epochs": [1]}


class TestGradientMasking(PluginContract):
    plugin = {"kind": "gradient_masking", "keep": 0.5, "interval": 3}


class TestLayerFreezing(PluginContract):
    plugin = {"kind": "layer_freezing", "tolerance": 1e6}


class TestDataSieving(PluginContract):
    plugin = {"kind": "data_sieving", "keep": 0.5}


# ---- the cost model ----------------------------------------------------------------------------
# tiny MLP 8 -> 16 -> 16 -> head 3: MACs per example 128, 256, 48. Backward per example, all
# layers training: weight gradients 2 x (128 + 256 + 48) + input gradients of the layers above
# the first 2 x (256 + 48) = 1472.
_DENSE = 1472


def test_backward_flops_and_examples_seen_without_plugins() -> None:
    _, (report,) = _train(_METHODS["wsn"], [])
    assert report.stats == {"examples_seen": 192.0, "backward_flops": 192.0 * _DENSE}


def test_data_removal_removes_the_scheduled_share() -> None:
    _, (report,) = _train(_METHODS["wsn"], [TestDataRemoval.plugin])
    # 96 examples; half of them removed before epoch 1
    assert report.stats["examples_seen"] == 96 + 48
    assert report.stats["data_removal/examples_removed"] == 48


def test_data_removal_removes_the_least_forgotten_first() -> None:
    from pipeline.recipe import DataRemovalPlugin

    plugin = DataRemoval(DataRemovalPlugin(fraction=0.5, at_epochs=[1]), build_method(
        tiny_mlp(), recipe_from_dict({"name": "p"})))
    plugin.begin_task(0, tiny_task(0, n=6))
    # presentations: example 0 forgets twice, 1 once, 2 never learned, 3-5 learned, never forget
    y = torch.zeros(6, dtype=torch.long)
    right, wrong = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    for pattern in ([1, 1, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1], [1, 1, 0, 1, 1, 1],
                    [0, 1, 0, 1, 1, 1]):
        logits = torch.cat([right if p else wrong for p in pattern])
        plugin.after_forward(0, torch.arange(6), logits, y[:6])
    order = torch.tensor([5, 4, 3, 2, 1, 0])
    kept = plugin.select(0, 1, order)
    assert kept.tolist() == [2, 1, 0]  # the three never-forgotten ones went; order kept


def test_gradient_masking_keeps_the_largest_share_of_trainable_gradients() -> None:
    from pipeline.recipe import GradientMaskingPlugin

    method = build_method(tiny_mlp(), recipe_from_dict({"name": "p"}))
    plugin = GradientMasking(GradientMaskingPlugin(keep=0.5, interval=2), method)
    plugin.begin_task(0, tiny_task(0))
    layers = list(method.model.masked_layers().values())
    g = torch.zeros_like(layers[0].weight)
    g.view(-1)[:8] = torch.tensor([1.0, -8.0, 3.0, 0.5, -2.0, 7.0, 0.1, 4.0])
    layers[0].weight.grad = g.clone()
    plugin.after_backward(0)
    kept = layers[0].weight.grad.view(-1)
    assert kept[:8].tolist() == [0.0, -8.0, 0.0, 0.0, 0.0, 7.0, 0.0, 4.0] or \
        kept[:8].tolist() == [0.0, -8.0, 3.0, 0.0, 0.0, 7.0, 0.0, 4.0]
    assert int(torch.count_nonzero(kept)) == 4 and not kept[8:].any()  # 4 of 8 non-zero
    # the mask is reused until the next update: a new gradient passes only where it kept
    layers[0].weight.grad = torch.ones_like(g)
    plugin.after_backward(0)
    assert int(layers[0].weight.grad.sum()) == 4


def test_gradient_masking_lowers_the_counted_backward_flops() -> None:
    _, (report,) = _train(_METHODS["wsn"], [TestGradientMasking.plugin])
    # weight gradients of the masked layers at half: 2 x (128 + 256) x 0.5 fewer per example
    assert report.stats["backward_flops"] == 192.0 * (_DENSE - 384)
    assert report.stats["gradient_masking/gradient_kept_fraction"] == pytest.approx(0.5, abs=0.02)


def test_layer_freezing_freezes_the_front_layer_and_stops_its_weights() -> None:
    method, (report,) = _train(_METHODS["wsn"], [TestLayerFreezing.plugin], epochs=3)
    assert report.stats["layer_freezing/layers_frozen"] == 1  # max_frozen 0.5 of 2 layers
    # epoch 0 dense; epochs 1, 2 with backbone.1 frozen: no weight gradient for it and no
    # input gradient into it: 2 x 256 + 2 x 48 + 2 x 48 (backbone.4's input gradient: none)
    assert report.stats["backward_flops"] == 96.0 * _DENSE + 2 * 96.0 * 704
    assert all(p.requires_grad for p in method.model.parameters())


def test_layer_freezing_keeps_a_frozen_layer_unchanged() -> None:
    from pipeline.plugins import LayerFreezing
    from pipeline.recipe import LayerFreezingPlugin

    method = build_method(tiny_mlp(), recipe_from_dict({"name": "p"}))
    method.model.add_task(3)
    plugin = LayerFreezing(LayerFreezingPlugin(tolerance=1e6), method)
    plugin.begin_task(0, tiny_task(0))
    phase = next(iter(method.phases(0)))
    plugin.begin_phase(phase)
    plugin.after_epoch(0, 0)
    first = method.model.masked_layers()["backbone.1"]
    assert not first.weight.requires_grad and not first.score.requires_grad
    assert method.model.masked_layers()["backbone.4"].weight.requires_grad
    plugin.end_phase()
    assert first.weight.requires_grad and first.score.requires_grad


def test_data_sieving_trains_on_the_hardest_share() -> None:
    _, (report,) = _train(_METHODS["wsn"], [TestDataSieving.plugin], epochs=3)
    assert report.stats["examples_seen"] == 96 + 48 + 48
    assert report.stats["data_sieving/examples_sieved"] == 96


def test_data_sieving_keeps_the_highest_losses() -> None:
    from pipeline.recipe import DataSievingPlugin

    plugin = DataSieving(DataSievingPlugin(keep=0.5), build_method(
        tiny_mlp(), recipe_from_dict({"name": "p"})))
    plugin.begin_task(0, tiny_task(0, n=4))
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [1.0, 0.0], [0.0, 1.0]])
    plugin.after_forward(0, torch.arange(4), logits, torch.zeros(4, dtype=torch.long))
    assert plugin.select(0, 0, torch.arange(4)).tolist() == [0, 1, 2, 3]  # warm-up
    assert plugin.select(0, 1, torch.tensor([3, 2, 1, 0])).tolist() == [3, 1]


def test_plugins_are_validated() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="unknown kind 'nope'"):
        TrainConfig(plugins=[{"kind": "nope"}])  # type: ignore[list-item]
    with pytest.raises(ValidationError, match="may appear once"):
        TrainConfig(plugins=[{"kind": "data_sieving"}, {"kind": "data_sieving"}])  # type: ignore[list-item]
    with pytest.raises(ValidationError, match="distinct epochs"):
        TrainConfig(plugins=[{"kind": "data_removal", "at_epochs": [0]}])  # type: ignore[list-item]


def _every_plugin(tmp_path: Path, device: str = "auto") -> Any:
    return recipe_from_dict({
        "name": "plugins", "output_dir": str(tmp_path / "runs"),
        "method": {"kind": "wsn", "density": 0.5, "mask": "rigl", "rigl": {"interval": 5}},
        "benchmark": {"stream": "permuted_mnist", "tasks": 2, "train_limit": 300,
                      "test_limit": 100, "val_fraction": 0.2},
        "model": {"arch": "mlp", "hidden": [32, 32]},
        "train": {"epochs": 3, "lr": 0.01, "batch_size": 32, "eval_batch_size": 100,
                  "device": device,
                  "plugins": [TestDataRemoval.plugin, TestGradientMasking.plugin,
                              TestLayerFreezing.plugin, TestDataSieving.plugin]},
    })


@pytest.mark.gpu
def test_every_plugin_runs_on_the_gpu_without_forgetting(tmp_path: Path) -> None:
    result = run_recipe(_every_plugin(tmp_path, "cuda"))
    rows = result.matrix.as_list()
    assert rows[1][0] == rows[0][0] and result.bwt == 0.0


@pytest.mark.slow
def test_a_run_with_every_plugin_forgets_nothing_and_logs_the_cost(tmp_path: Path) -> None:
    recipe = _every_plugin(tmp_path)
    tracker = NoopTracker()
    result = run_recipe(recipe, tracker=tracker)
    rows = result.matrix.as_list()
    assert rows[1][0] == rows[0][0] and result.bwt == 0.0
    children = tracker.runs[0].children
    assert len(children) == 2
    for child in children:
        for key in ("train/examples_seen", "train/backward_flops", "train_seconds",
                    "train/data_removal/examples_removed", "train/layer_freezing/layers_frozen",
                    "train/gradient_masking/gradient_kept_fraction",
                    "train/data_sieving/examples_sieved", "method/rigl_swapped"):
            assert key in child.metrics, key
        assert child.metrics["train/examples_seen"] < 3 * 240  # removal and sieving cut it
