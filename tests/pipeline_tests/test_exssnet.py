"""ExSSNeT invariants (docs/methods.md): the mask phase moves no weight, the weight phase moves
only the task's exclusive positions, KKT picks the earlier mask that classifies best."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pipeline.compress import task_tensors, trained_layers
from pipeline.data import Split, Task
from pipeline.evaluation import snapshot_logits
from pipeline.methods import ExSSNeT, TaskMasks
from pipeline.methods.exssnet import knn_accuracy
from pipeline.recipe import ExSSNeTMethod, TrainConfig, recipe_from_dict
from pipeline.runner import run_recipe
from pipeline.store import LayerCommit, PackedStore, TaskCommit
from pipeline.tracking import NoopTracker
from tests.pipeline_tests._tiny import learn_task, tiny_mlp, tiny_task

CFG = TrainConfig(lr=0.01, epochs=2, batch_size=16, eval_batch_size=32)


def _weights(method: ExSSNeT) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in method.model.masked_layers().items()}


def _learn(method: ExSSNeT, t: int, cfg: TrainConfig = CFG) -> TaskMasks:
    return learn_task(method, tiny_task(t), cfg)


def _commit(store: PackedStore, method: ExSSNeT, t: int, masks: TaskMasks) -> None:
    layers = trained_layers(method, t, masks)
    store.commit(TaskCommit(t, {n: LayerCommit(r.mask, r.own, 32, r.values)
                                for n, r in layers.items()},
                            task_tensors(method.model, t), {"num_classes": 3}))
    method.after_commit(t, store)


def test_signed_constant_backbone() -> None:
    method = ExSSNeT(tiny_mlp(), ExSSNeTMethod())
    method.setup()
    for layer in method.model.masked_layers().values():
        std = math.sqrt(2.0 / layer.weight.shape[1])
        assert torch.equal(layer.weight.detach().abs(), torch.full_like(layer.weight, std))


def test_mask_phase_changes_no_weight_and_learns_scores() -> None:
    method = ExSSNeT(tiny_mlp(), ExSSNeTMethod(density=0.3, weight_epochs=0))
    before = _weights(method)
    scores = {n: m.score.detach().clone() for n, m in method.model.masked_layers().items()}
    _learn(method, 0)
    for n, layer in method.model.masked_layers().items():
        assert torch.equal(layer.weight.detach(), before[n])
        assert layer.weight.requires_grad  # frozen for the phase only
        assert not torch.equal(layer.score.detach(), scores[n])


def test_weight_phase_changes_only_exclusive_positions() -> None:
    model = tiny_mlp()
    method = ExSSNeT(model, ExSSNeTMethod(density=0.4))
    m0 = _learn(method, 0)
    before = _weights(method)
    steps = []
    original = method.after_step

    def check(task: int) -> None:  # after every step of task 1, both phases
        for n, layer in model.masked_layers().items():
            assert torch.equal(layer.weight.detach()[m0.mask[n]], before[n][m0.mask[n]])
        steps.append(task)
        original(task)

    method.after_step = check  # type: ignore[method-assign]
    m1 = _learn(method, 1)
    assert steps
    changed_any = False
    for n, layer in model.masked_layers().items():
        exclusive = m1.mask[n] & ~m0.mask[n]
        assert torch.equal(m1.own[n], exclusive)
        changed = layer.weight.detach() != before[n]
        assert not (changed & ~exclusive).any(), n
        changed_any |= bool(changed.any())
    assert changed_any, "the weight phase trained nothing"


def test_old_task_logits_are_bit_identical_after_later_tasks() -> None:
    model = tiny_mlp(norm="per_task")
    method = ExSSNeT(model, ExSSNeTMethod(density=0.3))
    probe = torch.randn(20, 1, 1, 8, generator=torch.Generator().manual_seed(9))
    recorded = []
    for t in range(3):
        _learn(method, t)
        recorded.append(snapshot_logits(model, method.snapshot(t), t, probe, 10))
    for t in range(3):
        assert torch.equal(snapshot_logits(model, method.snapshot(t), t, probe, 10), recorded[t])


def test_knn_accuracy_on_a_hand_made_case() -> None:
    # fit on the first 4 (two clusters), test on the last 2: one near each cluster, one wrong
    x = torch.tensor([[0.0], [0.1], [5.0], [5.1], [0.05], [4.9]])
    y = torch.tensor([0, 0, 1, 1, 0, 0])
    assert knn_accuracy(x, y, k=1, fit_fraction=4 / 6) == 50.0
    assert knn_accuracy(x, y, k=2, fit_fraction=4 / 6) == 50.0
    assert knn_accuracy(x, y, k=4, fit_fraction=4 / 6) == 100.0  # 2:2 ties go to label 0


def _clusters(n: int = 90) -> Task:
    """Three far-apart Gaussian clusters, labelled by cluster, in a seeded order."""
    g = torch.Generator().manual_seed(3)
    y = torch.arange(n) % 3
    centres = torch.eye(3, 8) * 20.0
    x = (centres[y] + torch.randn(n, 8, generator=g)).reshape(n, 1, 1, 8)
    split = Split(x, y)
    return Task(2, "clusters", 3, split, split, split)


def test_kkt_copies_the_scores_of_the_task_whose_mask_classifies_best(tmp_path: Path) -> None:
    """Task 0's committed mask is empty (its features are all zero: k-NN can only guess);
    task 1's is full (far-apart clusters stay apart). The new task starts from task 1's scores."""
    model = tiny_mlp()
    method = ExSSNeT(model, ExSSNeTMethod(density=0.5, kkt=True, kkt_k=5, kkt_fraction=1.0))
    method.setup()
    store = PackedStore.create(tmp_path / "s.tpk", model.layer_shapes(), "tiny")
    for t in range(2):
        model.add_task(3)
        method.begin_task(t, store, tiny_task(t))
        masks = method.end_task(t)  # untrained; the committed masks are set by hand
        for n, m in masks.mask.items():
            masks.mask[n] = torch.full_like(m, t == 1)
            masks.own[n] = masks.mask[n] & ~masks.shared[n]
            masks.shared[n] = masks.mask[n] & masks.shared[n]
        _commit(store, method, t, masks)
    method.task_scores = [{n: torch.full_like(m.score, float(t + 1))
                           for n, m in model.masked_layers().items()} for t in range(2)]
    model.add_task(3)
    method.begin_task(2, store, _clusters())
    stats = method.stats
    assert stats["kkt_source"] == 1.0
    assert stats["kkt_acc_task_1"] == 100.0 and stats["kkt_acc_task_0"] < 50.0
    for layer in model.masked_layers().values():
        assert torch.equal(layer.score.detach(), torch.full_like(layer.score, 2.0))
    assert method.end_task(2).stats["kkt_source"] == 1.0


def test_kkt_state_survives_a_resume() -> None:
    method = ExSSNeT(tiny_mlp(), ExSSNeTMethod(density=0.3, kkt=True))
    for t in range(2):
        _learn(method, t, TrainConfig(lr=0.01, epochs=1, batch_size=32))
    state = method.state_dict()
    assert len(state) == 2 * len(method.model.masked_layers())
    again = ExSSNeT(tiny_mlp(), ExSSNeTMethod(density=0.3, kkt=True))
    again.load_state_dict(state)
    assert len(again.task_scores) == 2
    for mine, theirs in zip(method.task_scores, again.task_scores, strict=True):
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[n], theirs[n]) for n in mine)


@pytest.mark.parametrize("kkt", [False, True])
def test_every_task_starts_from_fresh_or_transferred_scores(kkt: bool) -> None:
    method = ExSSNeT(tiny_mlp(), ExSSNeTMethod(density=0.3, kkt=kkt))
    _learn(method, 0)
    trained = {n: m.score.detach().clone() for n, m in method.model.masked_layers().items()}
    method.model.add_task(3)
    method.begin_task(1)  # no store: no KKT, fresh scores
    for n, layer in method.model.masked_layers().items():
        assert not torch.equal(layer.score.detach(), trained[n])


@pytest.mark.slow
def test_the_run_tracks_which_task_kkt_picked(tmp_path: Path) -> None:
    recipe = recipe_from_dict({
        "name": "kkt", "output_dir": str(tmp_path),
        "method": {"kind": "exssnet", "density": 0.3, "kkt": True, "kkt_k": 20},
        "benchmark": {"stream": "permuted_mnist", "tasks": 2, "train_limit": 200,
                      "test_limit": 50, "val_fraction": 0.2},
        "model": {"arch": "mlp", "hidden": [32, 32]},
        "train": {"epochs": 1, "lr": 0.01, "batch_size": 32, "eval_batch_size": 50}})
    tracker = NoopTracker()
    run_recipe(recipe, tracker=tracker)
    task0, task1 = tracker.runs[0].children
    assert "method/kkt_source" not in task0.metrics
    assert task1.metrics["method/kkt_source"] == 0.0  # the only earlier task, far above chance
    assert task1.metrics["method/kkt_acc_task_0"] > 10.0
    assert 0 < task1.metrics["method/union_density"] <= 1
