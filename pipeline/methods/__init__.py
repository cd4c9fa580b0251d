"""Continual-learning methods: one class per method, chosen by the recipe's ``method.kind``."""

from __future__ import annotations

from pipeline.errors import RecipeError
from pipeline.methods._base import ContinualMethod, TaskMasks
from pipeline.methods.wsn import WSN
from pipeline.models import ContinualNet

__all__ = ["WSN", "ContinualMethod", "TaskMasks", "build_method"]


def build_method(cfg, model: ContinualNet) -> ContinualMethod:
    """The method named by ``cfg.kind`` (a validated ``recipe.method`` section)."""
    if cfg.kind == "wsn":
        return WSN(model, cfg.density)
    raise RecipeError(f"method.kind: unknown method {cfg.kind!r}")
