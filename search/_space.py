"""The search space: per layer, a sparsity grid, allowed patterns and bit-widths (recipe rules).

A layer takes the first rule whose ``match`` equals its name, else the first whose regex matches
it. Parameters are named ``<layer>.sparsity``, ``<layer>.pattern``, ``<layer>.bits`` so trials can
be compared per layer in MLflow and Optuna.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import RecipeError
from pipeline.recipe import LayerPlan, SearchSpaceRule


@dataclass(frozen=True)
class LayerSpace:
    name: str
    sparsity: tuple[float, float]
    step: float
    patterns: tuple[str, ...]
    bits: tuple[int, ...]


def resolve_space(rules: list[SearchSpaceRule], layers: list[str],
                  bits: tuple[int, ...] | None = None) -> dict[str, LayerSpace]:
    """Each layer's space from the first rule that matches it; ``bits`` replaces every rule's
    bit-widths (e.g. ``(32,)`` for a method whose tasks hold no own values to quantize)."""
    out: dict[str, LayerSpace] = {}
    for name in layers:
        rule = next((r for r in rules if r.match == name), None) or next(
            (r for r in rules if re.fullmatch(r.match, name)), None)
        if rule is None:
            raise RecipeError(f"search.space: no rule matches layer {name!r}; add one with "
                              f"match: '.*' or match: {name!r}")
        patterns = tuple(LayerPlan(pattern=p).pattern for p in rule.patterns)
        out[name] = LayerSpace(name, rule.sparsity, rule.sparsity_step, patterns,
                               tuple(sorted(set(rule.bits if bits is None else bits))))
    return out


def suggest_plans(trial, space: dict[str, LayerSpace]) -> dict[str, LayerPlan]:
    """Ask an Optuna trial for one LayerPlan per layer."""
    plans = {}
    for name, s in space.items():
        lo, hi = s.sparsity
        sparsity = lo if hi == lo else trial.suggest_float(f"{name}.sparsity", lo, hi,
                                                           step=s.step)
        if hi > lo and sparsity > hi:  # a step that does not divide the range
            sparsity = hi
        pattern = s.patterns[0] if len(s.patterns) == 1 else trial.suggest_categorical(
            f"{name}.pattern", list(s.patterns))
        bits = s.bits[0] if len(s.bits) == 1 else trial.suggest_categorical(
            f"{name}.bits", list(s.bits))
        plans[name] = LayerPlan(sparsity=round(sparsity, 6), pattern=pattern, bits=bits)
    return plans


def previous_plan(folder: Path, task: int, space: dict[str, LayerSpace]) -> dict | None:
    """Task ``task - 1``'s chosen trial parameters (its ``chosen.json``), restricted to the
    parameters ``space`` asks for; None for the first task or when there is none."""
    path = folder / f"task-{task - 1}" / "chosen.json"
    if task == 0 or not path.is_file():
        return None
    params = json.loads(path.read_text()).get("params", {})
    asked = {f"{n}.{k}" for n in space for k in ("sparsity", "pattern", "bits")}
    return {k: v for k, v in params.items() if k in asked} or None
