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


class Compressor(ABC):
    """Turns the task in ``ctx`` (trained, masks fixed) into a ``Compressed`` task.

    On return the live model's task tensors (head, per-task norms) must be the ones committed.
    """

    name: str = ""

    @abstractmethod
    def compress(self, session: Session, ctx: TaskContext) -> Compressed:
        """Compress task ``ctx.index`` of ``session``."""
