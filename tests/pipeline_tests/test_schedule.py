"""The training schedule: plateau or cosine lr, and what the best-state restore keys on."""

from __future__ import annotations

import math
from typing import Any

import pytest

from pipeline.evaluation import evaluate_live
from pipeline.methods import WSN
from pipeline.recipe import TrainConfig, WSNMethod
from pipeline.train import TrainReport, cosine_lr, train_task
from tests.pipeline_tests._tiny import tiny_mlp, tiny_task


class _Recording(WSN):
    """WSN that records the validation accuracy of every epoch (the trainer reports it here)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.val_accs: list[float] = []

    def after_epoch(self, task: int, epoch: int, val_acc: float) -> bool:
        self.val_accs.append(val_acc)
        return super().after_epoch(task, epoch, val_acc)


def _train(cfg: TrainConfig) -> tuple[_Recording, TrainReport]:
    model = tiny_mlp()
    method = _Recording(model, WSNMethod(density=0.5))
    task = tiny_task(0)
    model.add_task(task.num_classes)
    return method, train_task(method, 0, task, cfg)


def test_cosine_lr_runs_from_lr_to_lr_min() -> None:
    cfg = TrainConfig(lr=1e-2, lr_min=1e-4, schedule="cosine")
    assert cosine_lr(cfg, 0.0) == pytest.approx(1e-2)
    assert cosine_lr(cfg, 0.5) == pytest.approx((1e-2 + 1e-4) / 2)
    assert cosine_lr(cfg, 1.0) == pytest.approx(1e-4)
    lrs = [cosine_lr(cfg, i / 10) for i in range(11)]
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))


def test_cosine_schedule_runs_every_epoch_and_ends_at_the_last_steps_lr() -> None:
    # patience 0 would stop a plateau run at once (lr 0.05 / 1000 < lr_min); cosine ignores it
    cfg = TrainConfig(lr=0.05, lr_min=1e-4, lr_factor=1000, patience=0, epochs=4, batch_size=8,
                      eval_batch_size=32, schedule="cosine")
    method, report = _train(cfg)
    assert report.epochs == 4 and len(method.val_accs) == 4
    steps = math.ceil(len(tiny_task(0).train) / 8)
    assert report.final_lr == pytest.approx(cosine_lr(cfg, (3 + (steps - 1) / steps) / 4))


def test_plateau_schedule_still_stops_below_lr_min() -> None:
    cfg = TrainConfig(lr=0.05, lr_min=1e-2, lr_factor=10, patience=1, epochs=20, batch_size=8,
                      eval_batch_size=32, restore="val_acc")
    method, report = _train(cfg)
    # the first epoch without a better accuracy divides the lr by 10, below lr_min: stop
    assert report.epochs < 20
    assert report.final_lr == pytest.approx(0.005)


def test_restore_on_val_acc_keeps_the_first_epoch_of_highest_accuracy() -> None:
    cfg = TrainConfig(lr=0.05, epochs=6, batch_size=8, eval_batch_size=32, restore="val_acc")
    method, report = _train(cfg)
    best = max(method.val_accs)
    assert report.best_val_acc == best
    assert report.best_epoch == method.val_accs.index(best)
    acc, loss = evaluate_live(method.model, 0, tiny_task(0).val, 32)
    assert acc == best and loss == pytest.approx(report.best_val_loss, abs=0)
