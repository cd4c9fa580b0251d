"""Resolve per-layer settings: exact name first, then regex, then the default."""

from __future__ import annotations

import re

from pipeline.errors import RecipeError
from pipeline.recipe._search import CompressionConfig, LayerPlan

__all__ = ["match_layers", "plan_for_layers"]


def match_layers(matches: list[str], layer_names: list[str]) -> tuple[dict[str, int | None],
                                                                      list[int]]:
    """Which entry of ``matches`` each layer takes: the first equal to its name, else the first
    that matches it as a regex (``re.fullmatch``), else None. Also returns the indices of the
    entries that match no layer (callers report them as errors naming their recipe path)."""
    used = [False] * len(matches)
    chosen: dict[str, int | None] = {}
    for name in layer_names:
        pick = next((i for i, m in enumerate(matches) if m == name), None)
        if pick is None:
            pick = next((i for i, m in enumerate(matches) if re.fullmatch(m, name)), None)
        if pick is not None:
            used[pick] = True
        chosen[name] = pick
    return chosen, [i for i, ok in enumerate(used) if not ok]


def plan_for_layers(config: CompressionConfig, layer_names: list[str]) -> dict[str, LayerPlan]:
    """The LayerPlan of every layer. A rule that matches no layer is an error naming the rule."""
    chosen, unused = match_layers([r.match for r in config.rules], layer_names)
    if unused:
        bad = unused[0]
        raise RecipeError(
            f"compression.rules[{bad}].match: {config.rules[bad].match!r} matches no layer; "
            f"layers are {layer_names}"
        )
    plans: dict[str, LayerPlan] = {}
    for name, i in chosen.items():
        base = config.default if i is None else config.rules[i]
        plans[name] = LayerPlan(sparsity=base.sparsity, pattern=base.pattern, bits=base.bits)
    return plans
