"""The interface every continual-learning method implements.

The runner calls, per task: ``begin_task`` -> (training: ``param_groups``, ``after_backward`` every
step) -> ``end_task`` -> ``snapshot``. A method owns which weights a task may change and what a
task's committed subnetwork is; the trainer and the runner stay method-agnostic.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch

from pipeline.models import ContinualNet


@dataclass
class TaskMasks:
    """What a task ended up using, per layer: m_t, own_t = newly claimed, shared_t = reused."""

    mask: dict[str, torch.Tensor]
    own: dict[str, torch.Tensor]
    shared: dict[str, torch.Tensor]
    stats: dict[str, float] = field(default_factory=dict)


class ContinualMethod(ABC):
    """Base class: a method trains task after task inside one ``ContinualNet``."""

    def __init__(self, model: ContinualNet) -> None:
        self.model = model

    @abstractmethod
    def begin_task(self, task: int) -> None:
        """Put the model in the state for training ``task`` (its head already exists)."""

    @abstractmethod
    def param_groups(self, task: int) -> list[dict]:
        """Optimizer parameter groups for ``task``. Gated tensors get ``weight_decay=0``."""

    def after_backward(self, task: int) -> None:  # noqa: B027 - optional hook
        """Called between ``backward()`` and ``step()``: gate gradients here."""

    @abstractmethod
    def end_task(self, task: int) -> TaskMasks:
        """Fix the task's subnetwork once training is over (best state already restored)."""

    @abstractmethod
    def snapshot(self, task: int) -> dict[str, torch.Tensor]:
        """The task's committed tensors: masked dense weights of every prunable layer
        (``<layer>.weight``) plus its head and per-task norms, keyed like ``state_dict``."""
