"""Search objectives as a registry: one registered class per objective.

An :class:`Objective` says what a trial is scored on: its ``name`` (the recipe's
``search.objectives`` entry), whether Optuna should ``maximize`` or ``minimize`` it, how its value
is computed from a trial's :class:`~search._objective.TrialResult`, the MLflow metric(s) each trial
logs for it, and optionally a constraint (Optuna's convention: ``<= 0`` is satisfied) read from the
recipe's ``search.constraints``. Study directions, trial values, Pareto points, the knee and trial
logging all read this registry, so adding an objective is one ``@register_objective`` class::

    @register_objective
    class Energy(Objective):
        name = "energy"
        direction = "minimize"
        metric = "energy_mj"
        stat = "energy_mj"

        def value(self, result, ctx):
            return result.latency.median_ms * WATTS

A recipe may name any registered objective; ``SearchCompressor.check`` rejects unknown names
before any task trains.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal, TypeVar

if TYPE_CHECKING:
    from pipeline.recipe import SearchConstraints
    from search._objective import TrialResult

Direction = Literal["maximize", "minimize"]
DIRECTIONS: tuple[Direction, ...] = ("maximize", "minimize")


@dataclass(frozen=True)
class ScoreContext:
    """What an objective may compare a trial with: the task before compression."""

    reference_accuracy: float  # validation accuracy of the uncompressed task, %


class Objective(ABC):
    """One score of a trial. Subclasses set the class attributes and implement ``value``."""

    name: ClassVar[str]  # the recipe's search.objectives entry; unique in the registry
    direction: ClassVar[Direction]
    metric: ClassVar[str]  # MLflow metric each trial run logs the value under
    stat: ClassVar[str]  # the task's stats key suffix: search_chosen_<stat>
    fmt: ClassVar[str] = ".4g"  # how the value is written in logs and reasons
    constraint_name: ClassVar[str | None] = None  # the Optuna constraint's name, if any

    @abstractmethod
    def value(self, result: TrialResult, ctx: ScoreContext) -> float:
        """The trial's value of this objective (a finite float for a finished trial)."""

    def metrics(self, result: TrialResult, ctx: ScoreContext) -> dict[str, float]:
        """What a trial run logs for this objective; always includes ``metric``."""
        return {self.metric: self.value(result, ctx)}

    def constraint(self, value: float, limits: SearchConstraints,
                   ctx: ScoreContext) -> float | None:
        """The constraint value for ``value`` under ``limits`` (<= 0 satisfied), None if the
        recipe sets no limit on this objective."""
        return None

    def better(self, a: float, b: float) -> bool:
        """``a`` is strictly better than ``b``."""
        return a > b if self.direction == "maximize" else a < b

    def no_worse(self, a: float, b: float) -> bool:
        return a >= b if self.direction == "maximize" else a <= b

    def format(self, value: float) -> str:
        return format(value, self.fmt)


_REGISTRY: dict[str, Objective] = {}
_O = TypeVar("_O", bound=type[Objective])


def register_objective(cls: _O) -> _O:
    """Register an Objective subclass (usable as a class decorator); names must be unique."""
    if not (isinstance(cls, type) and issubclass(cls, Objective)):
        raise TypeError(f"register_objective needs an Objective subclass, got {cls!r}")
    obj = cls()
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__}.name must be a non-empty string, got {name!r}")
    if getattr(cls, "direction", None) not in DIRECTIONS:
        raise ValueError(f"{cls.__name__}.direction must be one of {DIRECTIONS}, got "
                         f"{getattr(cls, 'direction', None)!r}")
    for attr in ("metric", "stat"):
        if not isinstance(getattr(cls, attr, None), str):
            raise ValueError(f"{cls.__name__}.{attr} must be a string, got "
                             f"{getattr(cls, attr, None)!r}")
    if name in _REGISTRY:
        raise ValueError(f"objective names must be unique: {name!r} is already registered by "
                         f"{type(_REGISTRY[name]).__name__}, cannot register {cls.__name__}")
    _REGISTRY[name] = obj
    return cls


def unregister_objective(name: str) -> None:
    """Remove ``name`` (for tests and plugins that register temporarily)."""
    _REGISTRY.pop(name, None)


def get_objective(name: str) -> Objective:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"search objective must be one of {sorted(_REGISTRY)}, "
                         f"got {name!r}") from None


def registered() -> Mapping[str, Objective]:
    """Every registered objective by name, in registration order (built-ins first)."""
    return dict(_REGISTRY)


def resolve(names: Iterable[str]) -> list[Objective]:
    """The objectives ``names`` asks for, in order; unknown or repeated names are errors."""
    names = list(names)
    if len(set(names)) != len(names):
        raise ValueError(f"search objectives must not repeat, got {names}")
    if not names:
        raise ValueError("at least one search objective is needed, got none")
    return [get_objective(n) for n in names]


def directions(names: Iterable[str]) -> list[Direction]:
    """Optuna study directions for the objectives ``names``."""
    return [o.direction for o in resolve(names)]


def scores(result: TrialResult, ctx: ScoreContext) -> dict[str, float]:
    """Every registered objective's value for one trial (stored with the trial, so a study's
    points can be compared on any objective, configured or not)."""
    return {name: float(o.value(result, ctx)) for name, o in _REGISTRY.items()}


def constraints(values: Mapping[str, float], limits: SearchConstraints,
                ctx: ScoreContext) -> dict[str, float]:
    """Constraint values by constraint name for the limits the recipe sets (<= 0 satisfied)."""
    out = {}
    for name, o in _REGISTRY.items():
        if name not in values or o.constraint_name is None:
            continue
        c = o.constraint(values[name], limits, ctx)
        if c is not None:
            out[o.constraint_name] = float(c)
    return out


def trial_metrics(result: TrialResult, ctx: ScoreContext) -> dict[str, float]:
    """Every registered objective's metrics for one trial run."""
    out: dict[str, float] = {}
    for o in _REGISTRY.values():
        out |= o.metrics(result, ctx)
    return out


def describe(values: Mapping[str, float]) -> str:
    """``accuracy 97.1, latency 0.123, ...`` for the registered objectives in ``values``."""
    return ", ".join(f"{n} {o.format(values[n])}" for n, o in _REGISTRY.items()
                     if n in values and not math.isnan(values[n]))


from search.objectives import _builtin  # noqa: E402,F401  (registers the built-ins)
from search.objectives._builtin import (  # noqa: E402
    AccuracyObjective,
    BytesObjective,
    LatencyObjective,
)

__all__ = ["DIRECTIONS", "AccuracyObjective", "BytesObjective", "Direction",
           "LatencyObjective", "Objective",
           "ScoreContext", "constraints", "describe", "directions", "get_objective",
           "register_objective", "registered", "resolve", "scores", "trial_metrics",
           "unregister_objective"]
