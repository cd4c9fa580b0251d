"""CLNP invariants (docs/methods.md): frozen active units, no free->active link, pruning within
the margin on validation data only, the head reads active units only, diagnostics per task."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pipeline.data import Split, Task
from pipeline.errors import PipelineError, RecipeError
from pipeline.evaluation import snapshot_logits
from pipeline.methods import CLNP, TaskMasks, build_method, task_snapshot
from pipeline.methods._units import source_units
from pipeline.methods.clnp import link_mask, threshold_grid
from pipeline.recipe import CLNPMethod, TrainConfig, recipe_from_dict
from tests.pipeline_tests._tiny import learn_task, tiny_mlp, tiny_task

CFG = TrainConfig(lr=0.01, epochs=2, batch_size=16, eval_batch_size=32)


class _Untouchable:
    """A split that fails on any use: the sweep must never read the test split."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the test split was read ({name})")

    def __len__(self) -> int:
        raise AssertionError("the test split was read (len)")


def _task(t: int) -> Task:
    task = tiny_task(t)
    return Task(task.index, task.name, task.num_classes, task.train, task.val,
                _Untouchable())  # type: ignore[arg-type]


def _learn(method: CLNP, t: int) -> TaskMasks:
    return learn_task(method, _task(t), CFG)



def test_link_mask_is_rows_times_columns() -> None:
    rows = torch.tensor([True, False, True])
    cols = torch.tensor([False, True, True, False])
    expected = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0], [0, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(link_mask(rows, cols), expected)


def test_frozen_rows_never_move_and_no_free_unit_feeds_an_active_one() -> None:
    model = tiny_mlp(hidden=(24, 24))
    method = CLNP(model, CLNPMethod(margin=2.0, threshold_step=0.05))
    method.setup()
    steps: list[int] = []
    frozen: dict[str, torch.Tensor] = {}
    original = method.after_backward

    def check_then_gate(task: int) -> None:  # before every step = after the previous one
        for n, layer in model.masked_layers().items():
            rows = method.active[n]
            assert torch.equal(layer.weight.detach()[rows], frozen[n][rows]), (task, n)
        steps.append(task)
        original(task)

    method.after_backward = check_then_gate  # type: ignore[method-assign]
    before = {n: a.clone() for n, a in method.active.items()}
    for t in range(3):
        frozen = {n: m.weight.detach().clone() for n, m in model.masked_layers().items()}
        masks = _learn(method, t)
        src = source_units(model, method.active)
        for n, layer in model.masked_layers().items():
            active, w = method.active[n], layer.weight.detach()
            assert not (before[n] & ~active).any(), "active sets only grow"
            # no link from a non-active unit into an active one, in the weights or the mask
            assert not w[link_mask(active, ~src[n])].any()
            assert not (masks.mask[n] & link_mask(torch.ones_like(active), ~src[n])).any()
            assert not (masks.mask[n] & link_mask(~active, torch.ones_like(src[n]))).any()
            assert torch.equal(masks.own[n] | masks.shared[n], masks.mask[n])
            assert not (masks.own[n] & masks.shared[n]).any()
            assert masks.stats[f"free_units.{n}"] + masks.stats[f"active_units.{n}"] \
                == w.shape[0]
            assert masks.stats[f"free_units.{n}"] == float((~active).sum())
            before[n] = active.clone()
        last = list(model.masked_layers())[-1]
        assert not model.heads[t].weight.detach()[:, ~method.active[last]].any()
        assert f"reused_units.{last}" in masks.stats and "threshold" in masks.stats
    assert len(set(steps)) == 3


def test_earlier_tasks_are_bit_identical_after_later_tasks_train() -> None:
    model = tiny_mlp(hidden=(24, 24))
    method = CLNP(model, CLNPMethod(margin=2.0, threshold_step=0.05))
    probe = torch.randn(20, 1, 1, 8, generator=torch.Generator().manual_seed(9))
    masks0 = _learn(method, 0)
    snap0 = task_snapshot(model, masks0.mask, 0)
    logits0 = snapshot_logits(model, snap0, 0, probe, 10)
    for t in (1, 2):
        _learn(method, t)
    assert torch.equal(snapshot_logits(model, task_snapshot(model, masks0.mask, 0), 0, probe, 10),
                       logits0)
    for k, v in task_snapshot(model, masks0.mask, 0).items():
        assert torch.equal(v, snap0[k]), k


@pytest.mark.parametrize("margin", [0.0, 5.0])
def test_pruning_stays_within_the_margin_on_validation(margin: float) -> None:
    model = tiny_mlp(hidden=(24, 24))
    method = CLNP(model, CLNPMethod(margin=margin, threshold_step=0.02))
    masks = _learn(method, 0)
    s = masks.stats
    assert s["val_acc_pruned"] >= s["val_acc_unpruned"] - margin
    assert s["prune_drop"] == pytest.approx(s["val_acc_unpruned"] - s["val_acc_pruned"])
    assert s["thresholds_tried"] >= 1


def test_a_wider_margin_keeps_no_more_units() -> None:
    kept = []
    for margin in (0.0, 30.0):
        model = tiny_mlp(hidden=(24, 24))
        method = CLNP(model, CLNPMethod(margin=margin, threshold_step=0.02))
        _learn(method, 0)
        kept.append(sum(int(a.sum()) for a in method.active.values()))
    assert kept[1] <= kept[0]


def test_l1_on_activations_charges_only_free_units() -> None:
    model = tiny_mlp(hidden=(6, 5))
    method = CLNP(model, CLNPMethod(l1=0.5))
    model.add_task(3)
    task = tiny_task(0)
    method.begin_task(0, None, task)
    names = list(model.masked_layers())
    method.active[names[0]][:3] = True
    method.active[names[1]][1] = True
    x, y = task.train.x[:7], task.train.y[:7]
    logits = model(x, 0)
    hidden = F.relu(model.backbone[1](model.backbone[0](x)))
    second = F.relu(model.backbone[4](hidden))
    expected = (hidden[:, 3:].sum(1).mean()
                + second[:, [0, 2, 3, 4]].sum(1).mean())
    loss = method.loss(0, logits, y)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, y).item()
                                        + 0.5 * expected.item(), rel=1e-6)


def test_l1_on_weights_charges_only_links_into_free_units() -> None:
    model = tiny_mlp(hidden=(6, 5))
    method = CLNP(model, CLNPMethod(l1=0.5, l1_on="weights"))
    model.add_task(3)
    method.begin_task(0, None, tiny_task(0))
    first = list(model.masked_layers())[0]
    method.active[first][:2] = True
    logits = torch.zeros(2, 3)
    y = torch.tensor([0, 1])
    expected = sum(float(m.weight.detach()[~method.active[n]].abs().sum())
                   for n, m in model.masked_layers().items())
    assert method.loss(0, logits, y).item() == pytest.approx(
        F.cross_entropy(logits, y).item() + 0.5 * expected, rel=1e-6)


def test_end_task_without_data_says_what_it_needs() -> None:
    model = tiny_mlp()
    method = CLNP(model, CLNPMethod())
    model.add_task(3)
    method.begin_task(0, None)
    with pytest.raises(ValueError, match="needs its data"):
        method.end_task(0)


@pytest.mark.parametrize(("model", "message"), [
    ({"arch": "mlp", "hidden": [16], "norm": "stateless"}, "model.norm: method 'clnp' needs"),
    ({"arch": "alexnet"}, "model.arch: method 'clnp' supports only 'mlp'"),
])
def test_unsupported_models_are_a_recipe_error(model: dict, message: str) -> None:
    recipe = recipe_from_dict({"name": "t", "method": {"kind": "clnp"}, "model": model})
    with pytest.raises(RecipeError, match=message):
        build_method(tiny_mlp(), recipe)


def test_compile_is_a_recipe_error() -> None:
    recipe = recipe_from_dict({"name": "t", "method": {"kind": "clnp"},
                               "train": {"compile": True}})
    with pytest.raises(RecipeError, match="train.compile"):
        build_method(tiny_mlp(), recipe)


def test_no_validation_data_is_a_clear_error() -> None:
    model = tiny_mlp()
    method = CLNP(model, CLNPMethod())
    task = tiny_task(0)
    empty = Task(0, "t", 3, task.train, Split(task.val.x[:0], task.val.y[:0]), task.test)
    model.add_task(3)
    method.begin_task(0, None, empty)
    with pytest.raises(PipelineError, match="no validation examples"):
        method.end_task(0)


def test_threshold_grid_runs_through_the_free_units_quantiles() -> None:
    gen = torch.Generator().manual_seed(0)
    acts = {"a": torch.rand(40, generator=gen), "b": torch.rand(60, generator=gen) * 3}
    active = {"a": torch.zeros(40, dtype=torch.bool), "b": torch.zeros(60, dtype=torch.bool)}
    active["a"][:10] = True
    free = torch.cat([acts["a"][10:], acts["b"]]).sort().values
    grid = threshold_grid(acts, active, 0.1, 500)
    assert grid == sorted(grid) and len(set(grid)) == len(grid)
    assert grid[0] == float(free[0]) and grid[-1] == float(free[-1])
    # each step cuts about a tenth of the 90 free units, whatever the scale
    assert len(grid) == 11
    scaled = threshold_grid({n: a * 1e-3 for n, a in acts.items()}, active, 0.1, 500)
    assert scaled == pytest.approx([g * 1e-3 for g in grid])
    assert threshold_grid(acts, active, 0.1, 3) == grid[:3]
    every = {n: torch.ones_like(a) for n, a in active.items()}
    assert threshold_grid(acts, every, 0.1, 500) == []
