"""WSN invariants (docs/methods.md)."""

from __future__ import annotations

import pytest
import torch

from pipeline.evaluation import evaluate_live, snapshot_logits
from pipeline.methods import WSN
from pipeline.models import topc_mask
from pipeline.recipe import TrainConfig, WSNMethod
from pipeline.train import make_optimizer, merge_groups, train_task
from tests.pipeline_tests._tiny import tiny_mlp, tiny_task

CFG = TrainConfig(lr=0.01, epochs=3, batch_size=16, eval_batch_size=32)


def _learn(method: WSN, t: int) -> None:
    task = tiny_task(t)
    method.model.add_task(task.num_classes)
    train_task(method, t, task, CFG)
    method.end_task(t)


@pytest.mark.parametrize("norm", ["none", "stateless", "per_task"])
def test_old_task_logits_are_bit_identical_after_later_tasks(norm: str) -> None:
    model = tiny_mlp(norm=norm)
    method = WSN(model, WSNMethod(density=0.4))
    probe = torch.randn(20, 1, 1, 8, generator=torch.Generator().manual_seed(9))
    recorded = []
    for t in range(3):
        _learn(method, t)
        recorded.append(snapshot_logits(model, method.snapshot(t), t, probe, 10))
    for t in range(3):
        # the snapshot is rebuilt from the live model: any drift of frozen weights would show
        assert torch.equal(snapshot_logits(model, method.snapshot(t), t, probe, 10), recorded[t])


def test_frozen_weights_never_move_during_a_step() -> None:
    model = tiny_mlp()
    method = WSN(model, WSNMethod(density=0.5))
    _learn(method, 0)
    frozen = {n: m.weight.detach().clone() for n, m in model.masked_layers().items()}
    heads0 = [p.detach().clone() for p in model.heads[0].parameters()]
    steps = []
    original = method.after_backward

    def check_then_gate(task: int) -> None:
        # runs before every step, i.e. after every previous step: frozen entries unchanged
        for n, layer in model.masked_layers().items():
            m = method.consolidated[n]
            assert torch.equal(layer.weight.detach()[m], frozen[n][m])
        original(task)
        steps.append(task)

    method.after_backward = check_then_gate  # type: ignore[method-assign]
    task = tiny_task(1)
    model.add_task(task.num_classes)
    train_task(method, 1, task, TrainConfig(lr=0.05, epochs=2, batch_size=8))
    assert steps, "training made no step"
    for n, layer in model.masked_layers().items():
        m = method.consolidated[n]  # still M_0: task 1 has not ended
        assert torch.equal(layer.weight.detach()[m], frozen[n][m])
        assert not torch.equal(layer.weight.detach()[~m], frozen[n][~m]), "free weights trained"
    for p, before in zip(model.heads[0].parameters(), heads0, strict=True):
        assert torch.equal(p.detach(), before)


def test_masks_consolidation_and_counts() -> None:
    model = tiny_mlp()
    method = WSN(model, WSNMethod(density=0.3))
    union = {n: torch.zeros_like(m.weight, dtype=torch.bool)
             for n, m in model.masked_layers().items()}
    for t in range(3):
        task = tiny_task(t)
        model.add_task(task.num_classes)
        train_task(method, t, task, CFG)
        scores = {n: m.score.detach().clone() for n, m in model.masked_layers().items()}
        masks = method.end_task(t)
        for n, layer in model.masked_layers().items():
            assert int(masks.mask[n].sum()) == round(0.3 * layer.weight.numel())
            # the stored mask is top-c of the restored (best) scores
            assert torch.equal(masks.mask[n], topc_mask(scores[n], 0.3))
            assert not (masks.own[n] & union[n]).any()
            assert torch.equal(masks.own[n] | masks.shared[n], masks.mask[n])
            union[n] |= masks.mask[n]
            assert torch.equal(method.consolidated[n], union[n])


def test_best_state_is_restored() -> None:
    model = tiny_mlp()
    method = WSN(model, WSNMethod(density=0.5))
    task = tiny_task(0)
    model.add_task(task.num_classes)
    report = train_task(method, 0, task, TrainConfig(lr=0.05, epochs=4, batch_size=8,
                                                     eval_batch_size=32))
    acc, loss = evaluate_live(model, 0, task.val, 32)
    assert loss == pytest.approx(report.best_val_loss, abs=0)
    assert acc == report.best_val_acc


def test_tasks_must_come_in_order_and_snapshot_needs_an_ended_task() -> None:
    method = WSN(tiny_mlp(), WSNMethod(density=0.5))
    with pytest.raises(ValueError, match="tasks must come in order: expected 0, got 1"):
        method.begin_task(1)
    with pytest.raises(IndexError, match="task 0 has not ended"):
        method.snapshot(0)


def _unmerged(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """make_optimizer's optimizer with the groups as given."""
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, fused=True)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.RMSprop(groups, lr=cfg.lr)


@pytest.mark.parametrize("optimizer", ["adam", "sgd", "rmsprop"])
def test_merged_param_groups_step_exactly_like_separate_ones(optimizer: str) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = [torch.randn(30, 20, generator=g) for _ in range(5)]
    grads = [[torch.randn(30, 20, generator=g) for _ in tensors] for _ in range(4)]
    cfg = TrainConfig(lr=0.01, optimizer=optimizer, momentum=0.9)
    results = []
    for merge in (True, False):
        params = [t.clone().requires_grad_() for t in tensors]
        groups = [{"params": params[:2], "weight_decay": 0.0}, {"params": params[2:4],
                  "weight_decay": 0.0}, {"params": params[4:]}]
        assert len(merge_groups(groups)) == 1
        opt = make_optimizer(groups, cfg) if merge else _unmerged(groups, cfg)
        for step in grads:
            for p, gr in zip(params, step, strict=True):
                p.grad = gr.clone()
            opt.step()
        results.append([p.detach() for p in params])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)
    # different settings stay apart, and the caller's dicts are not changed
    groups = [{"params": [tensors[0]], "lr": 0.1}, {"params": [tensors[1]]}]
    assert [len(m["params"]) for m in merge_groups(groups)] == [1, 1]
    assert groups[1] == {"params": [tensors[1]]}
