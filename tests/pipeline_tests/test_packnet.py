"""PackNet invariants (docs/methods.md): exact per-layer pruning, frozen earlier tasks."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import RecipeError
from pipeline.evaluation import snapshot_logits
from pipeline.methods import PackNet, TaskMasks, task_snapshot
from pipeline.methods.packnet import layer_fractions, prune_smallest
from pipeline.recipe import PackNetMethod, TrainConfig, recipe_from_dict
from tests.pipeline_tests._tiny import learn_task, tiny_mlp, tiny_task

CFG = TrainConfig(lr=0.01, epochs=2, batch_size=16, eval_batch_size=32)
LAYERS = ["backbone.1", "backbone.4"]  # tiny_mlp's masked layers


def _learn(method: PackNet, t: int) -> TaskMasks:
    return learn_task(method, tiny_task(t), CFG)



def test_prune_smallest_removes_exactly_the_smallest_own_weights() -> None:
    w = torch.tensor([[0.5, -0.1, 0.3, -0.9, 0.2, 0.05, -0.4, 0.7],
                      [0.1, 0.1, -0.6, 0.8, -0.2, 0.3, 0.0, 0.1]])
    own = torch.ones(2, 8, dtype=torch.bool)
    own[0, :2] = False  # held by an earlier task: never pruned, whatever its magnitude
    keep = prune_smallest(w, own, 0.5)  # 14 own -> 7 pruned
    # pruned, smallest first: 0.0, 0.05, the three 0.1s, then |0.2| at (0,4) and (1,4), tied
    # and taken in position order; the 0.3s survive
    expected = torch.tensor([[0, 0, 1, 1, 0, 0, 1, 1],
                             [0, 0, 1, 1, 0, 1, 0, 0]], dtype=torch.bool)
    assert int((own & ~keep).sum()) == 7
    assert torch.equal(keep, expected)
    assert not (keep & ~own).any()
    assert torch.equal(prune_smallest(w, own, 0.0), own)


def test_layer_fractions_by_name_then_regex() -> None:
    cfg = PackNetMethod(prune_fraction={"backbone.4": 0.25, r"backbone\.\d": 0.75})
    assert layer_fractions(cfg, LAYERS) == {"backbone.1": 0.75, "backbone.4": 0.25}
    assert layer_fractions(PackNetMethod(prune_fraction=0.6), LAYERS) == {
        "backbone.1": 0.6, "backbone.4": 0.6}


@pytest.mark.parametrize(("fractions", "message"), [
    ({"backbone.1": 0.5}, r"method.prune_fraction: no entry matches layers \['backbone.4'\]"),
    ({".*": 0.5, "head": 0.5}, "method.prune_fraction.head: matches no layer"),
])
def test_layer_fractions_errors_name_the_recipe_path(fractions: dict, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        layer_fractions(PackNetMethod(prune_fraction=fractions), LAYERS)


@pytest.mark.parametrize(("fraction", "message"), [
    (1.0, "method.prune_fraction"), ({"(": 0.5}, "not a valid regular expression"),
    ({}, "needs 1 to 1024 entries, got 0"), ({".*": -0.1}, "method.prune_fraction"),
])
def test_bad_prune_fraction_is_rejected(fraction: object, message: str) -> None:
    with pytest.raises(RecipeError, match=message):
        recipe_from_dict({"name": "t", "method": {"kind": "packnet",
                                                  "prune_fraction": fraction}})


def test_each_task_prunes_exactly_its_fraction_per_layer_and_pruned_stay_zero() -> None:
    model = tiny_mlp()
    fractions = {"backbone.1": 0.25, "backbone.4": 0.5}
    method = PackNet(model, PackNetMethod(prune_fraction=fractions))
    held = {n: torch.zeros_like(m.weight, dtype=torch.bool)
            for n, m in model.masked_layers().items()}
    for t in range(3):
        masks = _learn(method, t)
        for n, layer in model.masked_layers().items():
            free = int((~held[n]).sum())
            assert int(masks.own[n].sum()) == free - round(fractions[n] * free), (t, n)
            assert torch.equal(masks.shared[n], held[n])  # reuse_only: every earlier weight
            assert torch.equal(masks.mask[n], held[n] | masks.own[n])
            pruned = ~held[n] & ~masks.own[n]
            assert torch.equal(layer.weight.detach()[pruned], torch.zeros(int(pruned.sum())))
            held[n] = masks.mask[n]
        assert masks.stats["union_density"] == pytest.approx(
            sum(int(h.sum()) for h in held.values()) / model.num_prunable())


def test_earlier_tasks_are_bit_identical_after_later_tasks_train() -> None:
    model = tiny_mlp()
    method = PackNet(model, PackNetMethod(prune_fraction=0.5))
    probe = torch.randn(20, 1, 1, 8, generator=torch.Generator().manual_seed(9))
    masks0 = _learn(method, 0)
    weights0 = {n: m.weight.detach().clone() for n, m in model.masked_layers().items()}
    logits0 = snapshot_logits(model, task_snapshot(model, masks0.mask, 0), 0, probe, 10)
    steps = []
    original = method.after_backward

    def check_then_gate(task: int) -> None:  # before every step = after the previous one
        for n, layer in model.masked_layers().items():
            m = masks0.mask[n]
            assert torch.equal(layer.weight.detach()[m], weights0[n][m])
        steps.append(task)
        original(task)

    method.after_backward = check_then_gate  # type: ignore[method-assign]
    for t in (1, 2):
        _learn(method, t)
    assert steps
    for n, layer in model.masked_layers().items():
        m = masks0.mask[n]
        assert torch.equal(layer.weight.detach()[m], weights0[n][m])
        assert not torch.equal(layer.weight.detach()[~m], weights0[n][~m]), "free never trained"
    assert torch.equal(snapshot_logits(model, task_snapshot(model, masks0.mask, 0), 0, probe, 10),
                       logits0)


def test_retrain_phase_runs_on_survivors_at_the_scaled_lr() -> None:
    recipe = recipe_from_dict({"name": "t", "train": {"lr": 0.02},
                               "method": {"kind": "packnet", "retrain_epochs": 3}})
    model = tiny_mlp()
    method = PackNet(model, recipe.method, recipe)  # type: ignore[arg-type]
    model.add_task(3)
    method.begin_task(0)
    gen = iter(method.phases(0))
    train = next(gen)
    assert (train.name, train.mode.mode) == ("train", "dense")
    torch.optim.Adam(train.param_groups, lr=0.5)  # as the trainer does: it writes lr into them
    retrain = next(gen)  # prunes now
    assert all("lr" not in g for g in retrain.param_groups)  # so the phase's own lr applies
    assert (retrain.name, retrain.epochs, retrain.lr) == ("retrain", 3, pytest.approx(0.002))
    assert retrain.mode.masks is not None
    assert all(torch.equal(retrain.mode.masks[n], method.survivors[n]) for n in LAYERS)
    assert next(gen, None) is None
    no_retrain = PackNet(tiny_mlp(), PackNetMethod(retrain_epochs=0))
    no_retrain.model.add_task(3)
    assert [p.name for p in no_retrain.phases(0)] == ["train"]
