"""The hooks a training-efficiency plugin gets from the training loop (``train.plugins``).

Per task the loop builds fresh plugins (``TrainPlugins.build``) and calls, in this order::

    begin_task(task, data)
    for each phase:  begin_phase(phase)
        every epoch: select(task, epoch, order)         # which examples, after the method's choice
            every step: after_forward(task, idx, logits, y) -> backward -> method.after_backward
                        -> after_backward(task) -> optimizer step
            after_epoch(task, epoch)
        end_phase()
    stats()                                                # logged as train/<kind>/<name>

A plugin must keep forgetting at zero: it may change which of the task's examples train, and the
gradients (or trainability) of the task's own tensors; it never writes a weight.
``weight_grad_fraction`` tells the analytic cost model (``TrainCost``) what fraction of a layer's
weight-gradient entries the plugin leaves to compute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from pipeline.recipe import PluginConfig

if TYPE_CHECKING:
    from pipeline.data import Task
    from pipeline.methods import Method, Phase

__all__ = ["TrainPlugin"]


class TrainPlugin:
    """A training-efficiency plugin; every hook is optional (a no-op by default).

    Constructed as ``Plugin(cfg, method)``: ``cfg`` is its validated ``train.plugins`` entry.
    """

    def __init__(self, cfg: PluginConfig, method: Method) -> None:
        self.cfg = cfg
        self.method = method
        self.model = method.model

    def begin_task(self, task: int, data: Task) -> None:
        """Before the task's first phase; ``data`` is the task's data (on the training device)."""

    def begin_phase(self, phase: Phase) -> None:
        """Before a phase trains (its mask mode applied)."""

    def select(self, task: int, epoch: int, order: torch.Tensor) -> torch.Tensor:
        """The indices of the epoch's training examples, in order; return a subset of ``order``
        (keeping its order) to train on fewer."""
        return order

    def after_forward(self, task: int, idx: torch.Tensor, logits: torch.Tensor,
                      y: torch.Tensor) -> None:
        """After a training step's forward: ``idx`` are the examples' indices (detached logits)."""

    def after_backward(self, task: int) -> None:
        """After the method's ``after_backward``, before the optimizer step: gate gradients."""

    def after_epoch(self, task: int, epoch: int) -> None:
        """After an epoch's validation."""

    def end_phase(self) -> None:
        """After a phase trained (its best state restored): undo what ``begin_phase`` set."""

    def weight_grad_fraction(self, layer: str) -> float:
        """Fraction of masked layer ``layer``'s weight-gradient entries this plugin keeps."""
        return 1.0

    def stats(self) -> dict[str, float]:
        """Figures logged per task as ``train/<kind>/<name>``."""
        return {}
