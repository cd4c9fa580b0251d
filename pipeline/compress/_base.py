"""The Compressor interface: what turns a trained task into what is committed.

The runner calls ``compress`` once per task, after ``Method.end_task`` and before the commit,
without knowing which compressor it holds: the recipe's plan through TSN's passes
(``PlanCompressor``) or the Optuna search (``search.SearchCompressor``, wired in by the CLI).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from pipeline.compress._tsn import LayerResult
from pipeline.session import Session, TaskContext

__all__ = ["Compressed", "Compressor"]


@dataclass
class Compressed:
    """A compressed task: per layer its mask, own positions, values, bits and codebook (what the
    store commits), and the figures worth logging (``acc_*`` keys also go into the store)."""

    layers: dict[str, LayerResult]
    stats: dict[str, float] = field(default_factory=dict)
    # recorded with the task in the store (``taskpack inspect`` shows them): ``pattern/<layer>``
    # per layer; ``latency_ms`` and ``latency_target`` when the compressor measured one
    meta: dict[str, str | float] = field(default_factory=dict)


class Compressor(ABC):
    """Turns the task in ``ctx`` (trained, masks fixed) into a ``Compressed`` task.

    On return the live model's task tensors (head, per-task norms) must be the ones committed.
    """

    name: str = ""

    @abstractmethod
    def compress(self, session: Session, ctx: TaskContext) -> Compressed:
        """Compress task ``ctx.index`` of ``session``."""

    def resume_trained(self, session: Session, task: int) -> bool:
        """Called before task ``task`` trains (its head added, ``begin_task`` done): restore the
        live model as it was right after an interrupted run trained the task, from a
        checkpoint this compressor kept, and return True (the task is then not trained again);
        False to train as usual (the default)."""
        return False
