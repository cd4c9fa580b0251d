"""Continual-learning methods: one class per method, chosen by the recipe's ``method.kind``."""

from __future__ import annotations

from pipeline.errors import RecipeError
from pipeline.methods._base import ContinualMethod, TaskMasks
from pipeline.methods.tsn import TSN
from pipeline.methods.wsn import WSN
from pipeline.models import ContinualNet

__all__ = ["TSN", "WSN", "ContinualMethod", "TaskMasks", "build_method"]


def build_method(cfg, model: ContinualNet, bit_budget: int = 32) -> ContinualMethod:
    """The method named by ``cfg.kind`` (a validated ``recipe.method`` section)."""
    if cfg.kind == "wsn":
        return WSN(model, cfg.density)
    if cfg.kind == "tsn":
        return TSN(model, cfg, bit_budget)
    raise RecipeError(f"method.kind: unknown method {cfg.kind!r}")
