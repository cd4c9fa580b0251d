"""The method registry: ``method.kind`` in a recipe -> (config class, method class)."""

from __future__ import annotations

from pipeline.errors import RecipeError, did_you_mean
from pipeline.methods._base import Method
from pipeline.models import ContinualNet
from pipeline.recipe import MethodConfig, Recipe, register_method_config

__all__ = ["build_method", "method_class", "method_names", "register_method"]

_METHODS: dict[str, type[Method]] = {}


def register_method(kind: str, config: type[MethodConfig], method: type[Method]) -> None:
    """Register a method: recipes with ``method: {kind: <kind>}`` validate into ``config`` and
    run ``method``. Registering the same pair twice is allowed (module reloads); another class
    under a taken kind is an error."""
    if not (isinstance(method, type) and issubclass(method, Method)):
        raise TypeError(f"a method must subclass pipeline.methods.Method, but got {method!r}.")
    known = _METHODS.get(kind)
    if known is not None and known is not method:
        raise ValueError(f"method kind {kind!r} is already registered to {known.__name__}.")
    register_method_config(kind, config)
    _METHODS[kind] = method


def method_names() -> tuple[str, ...]:
    """Every registered ``method.kind``, in registration order."""
    return tuple(_METHODS)


def method_class(kind: str) -> type[Method]:
    try:
        return _METHODS[kind]
    except KeyError:
        raise RecipeError(f"method.kind: unknown method {kind!r}; registered: "
                          f"{sorted(_METHODS)}{did_you_mean(kind, _METHODS)}") from None


def build_method(model: ContinualNet, recipe: Recipe) -> Method:
    """The method the recipe names, set up on ``model``."""
    method = method_class(recipe.method.kind)(model, recipe.method, recipe)
    method.setup()
    return method
