"""Reading recipes: YAML -> overrides -> validated, frozen ``Recipe``; and back to YAML.

Errors are one line that names the recipe path, e.g. ``train.lr: must be > 0, got -1``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from pipeline.errors import RecipeError
from pipeline.recipe._schema import Recipe


def _describe(err: ErrorDetails) -> str:
    """One readable phrase for one pydantic error."""
    kind, ctx, got = err["type"], err.get("ctx") or {}, err.get("input")
    limits = {
        "greater_than": ("must be > {gt}", "gt"),
        "greater_than_equal": ("must be >= {ge}", "ge"),
        "less_than": ("must be < {lt}", "lt"),
        "less_than_equal": ("must be <= {le}", "le"),
    }
    if kind in limits:
        text, key = limits[kind]
        return f"{text.format(**{key: _num(ctx.get(key))})}, got {got!r}"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {got!r}"
    if kind in ("method_kind", "method_type"):  # raised by the recipe's method dispatch
        return str(err["msg"])
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be an integer, got {got!r}"
    if kind == "finite_number":
        return f"must be a finite number, got {got!r}"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number, got {got!r}"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false, got {got!r}"
    if kind in ("string_type",):
        return f"must be a string, got {got!r}"
    if kind in ("list_type",):
        return f"must be a list, got {got!r}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping, got {got!r}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s), got {got!r}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}, got {got!r}"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return f"{err['msg']}, got {got!r}"


def _num(v: Any) -> Any:
    """0.0 -> 0 so messages read `must be > 0`, as a person writes it."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def format_validation_error(exc: ValidationError, source: str = "recipe") -> str:
    """All errors of a ValidationError, one line each, first line prefixed by the source."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        lines.append(f"{loc or '<top>'}: {_describe(err)}")
    return f"{source}: " + "; ".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``key.sub=value`` -> (["key", "sub"], value parsed as a YAML scalar or flow value)."""
    if "=" not in text:
        raise RecipeError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise RecipeError(f"--set expects key=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to raw recipe data (a copy is returned)."""
    data = json.loads(json.dumps(data, default=str))
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                node = node[_index(part, path[: i + 1], len(node))]
            else:
                node = node.setdefault(part, {})
                if not isinstance(node, dict | list):
                    raise RecipeError(f"--set {text}: {'.'.join(path[: i + 1])} is not a section")
        last = path[-1]
        if isinstance(node, list):
            node[_index(last, path, len(node))] = value
        else:
            node[last] = value
    return data


def _index(part: str, path: list[str], size: int) -> int:
    if not part.isdigit() or int(part) >= size:
        raise RecipeError(f"--set: {'.'.join(path)} is not an index into a list of {size}")
    return int(part)


def recipe_from_dict(data: Any, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a YAML mapping, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, source)) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise RecipeError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        raise RecipeError(f"{path}: the file is empty")
    if overrides:
        if not isinstance(data, dict):
            raise RecipeError(f"{path}: a recipe must be a YAML mapping")
        data = apply_overrides(data, overrides)
    return recipe_from_dict(data, str(path))


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    return recipe.model_dump(mode="json")


def recipe_to_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe (defaults filled in); loading it gives the same recipe."""
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested dict/list -> {"a.b.0.c": "value"} for MLflow params."""
    out: dict[str, str] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(data, list) and data and all(isinstance(v, dict) for v in data):
        for i, v in enumerate(data):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix[:-1]] = json.dumps(data) if isinstance(data, list) else str(data)
    return out


def recipe_json_schema() -> str:
    return json.dumps(Recipe.model_json_schema(), indent=2, sort_keys=True) + "\n"
