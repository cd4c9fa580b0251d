"""Resolve per-layer compression plans: exact name first, then regex, then the default."""

from __future__ import annotations

import re

from pipeline.errors import RecipeError
from pipeline.recipe._schema import CompressionConfig, LayerPlan


def plan_for_layers(config: CompressionConfig, layer_names: list[str]) -> dict[str, LayerPlan]:
    """The LayerPlan of every layer. A rule that matches no layer is an error naming the rule."""
    used = [False] * len(config.rules)
    plans: dict[str, LayerPlan] = {}
    for name in layer_names:
        chosen: LayerPlan | None = None
        for i, rule in enumerate(config.rules):
            if rule.match == name:
                chosen, used[i] = rule, True
                break
        if chosen is None:
            for i, rule in enumerate(config.rules):
                if re.fullmatch(rule.match, name):
                    chosen, used[i] = rule, True
                    break
        base = chosen if chosen is not None else config.default
        plans[name] = LayerPlan(sparsity=base.sparsity, pattern=base.pattern, bits=base.bits)
    for i, ok in enumerate(used):
        if not ok:
            raise RecipeError(
                f"compression.rules[{i}].match: {config.rules[i].match!r} matches no layer; "
                f"layers are {layer_names}"
            )
    return plans
