"""Training one task: the method's phases, each on the recipe's schedule (docs/methods.md).

A phase gets a fresh optimizer. After each epoch the validation split decides: keep the best
state (lowest validation loss, or highest accuracy with ``train.restore: val_acc``). With the
default ``plateau`` schedule, if it has not improved for ``patience`` epochs the lr is divided by
``lr_factor`` and training stops when the lr falls below ``lr_min``; the ``cosine`` schedule
instead lowers the lr every step from ``lr`` to ``lr_min`` over the phase's epochs. A method's
``after_epoch`` may stop a phase early. At the end of a phase its best state is restored. Works
for any registered ``Method``.

The recipe's ``train.plugins`` (pipeline.plugins) run inside the same loop through one set of
hooks; every task reports what its training cost (examples seen, analytic backward FLOPs) in
``TrainReport.stats``, with or without plugins.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from dataclasses import replace

import torch

from pipeline.data import Task
from pipeline.device import TrainDevice
from pipeline.errors import PipelineError
from pipeline.evaluation import evaluate_live
from pipeline.methods import Method, Phase
from pipeline.plugins import TrainCost, TrainPlugins
from pipeline.progress import QUIET, Bars
from pipeline.recipe import TrainConfig
from pipeline.session import TrainReport

__all__ = ["TrainReport", "compiled", "cosine_lr", "make_optimizer", "merge_groups", "train_task"]

_SYNC = 50  # steps between the host's reads of the loss (progress and the finite check)
_COMPILED: weakref.WeakKeyDictionary[torch.nn.Module, Callable[..., torch.Tensor]] = \
    weakref.WeakKeyDictionary()


def compiled(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
    """``torch.compile`` of ``model`` for training steps, made once per model (``train.compile``).

    Evaluation and compression run the plain model: they are not where the time goes, and
    evaluating committed tasks must not depend on a compiler's fusion choices.
    """
    fn = _COMPILED.get(model)
    if fn is None:
        fn = _COMPILED[model] = torch.compile(model)
    return fn


def merge_groups(groups: list[dict]) -> list[dict]:
    """Param groups with the same settings as one group each (new dicts; the inputs are not
    changed). The optimizer's per-element arithmetic does not depend on grouping, but each group
    is one more pass of its Python and one more fused kernel launch: a WSN phase's weights,
    scores and head in one group make Adam's step 2.6x cheaper at batch 10 (measured)."""
    merged: list[dict] = []
    for g in groups:
        # make_optimizer's optimizers default to no weight decay: a group without the key has 0
        settings = {"weight_decay": 0.0} | {k: v for k, v in g.items() if k != "params"}
        for m in merged:
            if {k: v for k, v in m.items() if k != "params"} == settings:
                m["params"] = [*m["params"], *g["params"]]
                break
        else:
            merged.append({**settings, "params": list(g["params"])})
    return merged


def make_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = merge_groups(groups)
    if cfg.optimizer == "adam":
        # fused: one pass over each tensor; ~25% faster steps on the 2000-2000 MLP on CPU. With
        # zero gradient and zero moments its update is exactly 0, so frozen weights stay frozen.
        return torch.optim.Adam(groups, lr=cfg.lr, fused=True)
    if cfg.optimizer == "rmsprop":  # torch's defaults (alpha 0.99), as SupSup's code
        return torch.optim.RMSprop(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


def train_task(method: Method, task: int, data: Task, cfg: TrainConfig,
               bars: Bars = QUIET, device: TrainDevice | None = None) -> TrainReport:
    """Run every phase of ``task``; the report sums epochs and seconds over the phases.

    ``data`` lives on the model's device (``Session.load_task``); ``device`` adds the precision
    (default: fp32 on the model's device).
    """
    start = time.perf_counter()
    # the example order comes from a CPU generator, so it is the same on every device
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + task)
    dev = device or TrainDevice.host()
    plugins = TrainPlugins.build(cfg.plugins, method)
    plugins.begin_task(task, data)
    cost = TrainCost()
    report, epochs, per_epoch = None, 0, []
    for phase in method.phases(task):  # may be a generator: a phase can depend on the last
        report = _train_phase(method, task, data, cfg, phase, gen, bars, dev, plugins, cost)
        epochs += report.epochs
        per_epoch += report.epoch_seconds
    if report is None:
        raise PipelineError(f"method {method.cfg.kind!r} gave task {task} no training phase")
    return replace(report, epochs=epochs, seconds=time.perf_counter() - start,
                   epoch_seconds=per_epoch, stats=cost.stats() | plugins.stats())


def cosine_lr(cfg: TrainConfig, progress: float) -> float:
    """The lr of the cosine schedule at ``progress`` in [0, 1] of a phase: lr down to lr_min."""
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * progress))


def _train_phase(method: Method, task: int, data: Task, cfg: TrainConfig, phase: Phase,
                 gen: torch.Generator, bars: Bars, dev: TrainDevice, plugins: TrainPlugins,
                 cost: TrainCost) -> TrainReport:
    model = method.model
    forward = compiled(model) if cfg.compile else model
    start = time.perf_counter()
    phase.mode.apply(model)
    cost.probe(model, task, data.train.x[:2])
    plugins.begin_phase(phase)
    model.set_frozen(phase.frozen)
    try:
        return _train_epochs(method, task, data, cfg, phase, gen, bars, dev, plugins, cost,
                             forward, start)
    finally:
        model.set_frozen(None)
        plugins.end_phase()


def _train_epochs(method: Method, task: int, data: Task, cfg: TrainConfig, phase: Phase,
                  gen: torch.Generator, bars: Bars, dev: TrainDevice, plugins: TrainPlugins,
                  cost: TrainCost, forward: Callable[..., torch.Tensor],
                  start: float) -> TrainReport:
    model = method.model
    on = data.train.x.device
    if phase.lr is not None:
        cfg = cfg.model_copy(update={"lr": phase.lr})
    if phase.optimizer is not None:
        cfg = cfg.model_copy(update={"optimizer": phase.optimizer})
    max_epochs = cfg.epochs if phase.epochs is None else phase.epochs
    opt = make_optimizer(phase.param_groups, cfg)  # fresh per phase: no stale moments
    params = [p for g in phase.param_groups for p in g["params"]]
    lr, best_loss, best_acc, best_epoch, wait = cfg.lr, math.inf, -math.inf, -1, 0
    best_state = [p.detach().clone() for p in params]
    epoch, per_epoch = 0, []
    label = f"task {task} epochs" if phase.name == "train" else f"task {task} {phase.name}"
    with bars.bar(label, max_epochs) as ebar:
        for epoch in range(max_epochs):
            epoch_start = time.perf_counter()
            model.train()
            chosen = method.select_examples(task, epoch, len(data.train))
            if chosen is None:
                order = torch.randperm(len(data.train), generator=gen)
            else:
                order = chosen.cpu()[torch.randperm(len(chosen), generator=gen)]
            order = plugins.select(task, epoch, order.to(on))  # one copy per epoch
            trained = {id(p) for p in params}
            cost.begin_epoch(trained, plugins.weight_grad_fraction)
            steps = math.ceil(len(order) / cfg.batch_size)
            finite = torch.ones((), dtype=torch.bool, device=on)
            with bars.bar(f"epoch {epoch}", steps) as bbar:
                for step, i in enumerate(range(0, len(order), cfg.batch_size)):
                    if cfg.schedule == "cosine":
                        lr = cosine_lr(cfg, (epoch + step / steps) / max_epochs)
                        for g in opt.param_groups:
                            g["lr"] = lr
                    idx = order[i:i + cfg.batch_size]
                    with dev.autocast():
                        out = forward(data.train.x[idx], task)
                    y = data.train.y[idx]
                    loss = method.loss(task, out.float(), y)
                    plugins.after_forward(task, idx, out.detach(), y)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    method.after_backward(task)
                    plugins.after_backward(task)
                    cost.step(len(idx))
                    opt.step()
                    method.after_step(task)
                    # the host reads the loss every _SYNC steps only: each read waits for
                    # the device
                    finite &= torch.isfinite(loss.detach())
                    if (step + 1) % _SYNC == 0 or step + 1 == steps:
                        if not bool(finite):
                            raise PipelineError(
                                f"task {task}: training loss became {loss.item()} in epoch "
                                f"{epoch}; lower train.lr (now {lr})")
                        bars.advance(bbar, (step % _SYNC) + 1, info=f"loss {loss.item():.3f}")
            val_acc, val_loss = evaluate_live(model, task, data.val, cfg.eval_batch_size)
            per_epoch.append(time.perf_counter() - epoch_start)  # the val read synchronised
            bars.advance(ebar, info=f"val acc {val_acc:.2f}%")
            better = val_loss < best_loss if cfg.restore == "val_loss" else val_acc > best_acc
            if better:
                best_loss, best_acc, best_epoch, wait = val_loss, val_acc, epoch, 0
                best_state = [p.detach().clone() for p in params]
            elif cfg.schedule == "plateau":
                wait += 1
                if wait >= max(cfg.patience, 1):
                    lr, wait = lr / cfg.lr_factor, 0
                    for g in opt.param_groups:
                        g["lr"] = lr
                    if lr < cfg.lr_min:
                        break
            plugins.after_epoch(task, epoch)
            if method.after_epoch(task, epoch, val_acc):
                break
    with torch.no_grad():
        for p, best in zip(params, best_state, strict=True):
            p.copy_(best)
    best_acc = best_acc if best_epoch >= 0 else math.nan
    return TrainReport(epoch + 1, best_epoch, best_loss, best_acc, lr,
                       time.perf_counter() - start, per_epoch)
