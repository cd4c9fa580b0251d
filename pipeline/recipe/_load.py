"""Reading recipes: YAML -> overrides -> validated, frozen ``Recipe``; and back to YAML.

Errors are one line that names the recipe path, e.g. ``train.lr: must be > 0, got -1``.
"""

from __future__ import annotations

import json
import reprlib
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from pipeline.errors import RecipeError, did_you_mean
from pipeline.recipe._schema import Recipe
from pipeline.recipe._yaml import MAX_BYTES, MAX_DEPTH, YAMLRejected, dump_yaml, load_yaml

MAX_ERRORS = 5  # errors listed in one message; the rest are counted
_EXCERPT = reprlib.Repr()  # Python 3.11's Repr takes no keyword arguments
(_EXCERPT.maxlevel, _EXCERPT.maxdict, _EXCERPT.maxlist, _EXCERPT.maxtuple, _EXCERPT.maxstring,
 _EXCERPT.maxlong, _EXCERPT.maxother) = (2, 4, 4, 4, 60, 40, 60)


def excerpt(value: Any, limit: int = 80) -> str:
    """A short repr of ``value``: bounded in length and in the time it takes, whatever its size
    (an aliased structure can hold millions of values; a long int's repr may raise)."""
    try:
        text = _EXCERPT.repr(value)
    except ValueError:  # an int past sys.get_int_max_str_digits()
        text = f"<an integer of {value.bit_length()} bits>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(err: ErrorDetails) -> str:
    """One readable phrase for one pydantic error."""
    kind, ctx = err["type"], err.get("ctx") or {}
    got = excerpt(err.get("input"))
    limits = {
        "greater_than": ("must be > {gt}", "gt"),
        "greater_than_equal": ("must be >= {ge}", "ge"),
        "less_than": ("must be < {lt}", "lt"),
        "less_than_equal": ("must be <= {le}", "le"),
    }
    if kind in limits:
        text, key = limits[kind]
        return f"{text.format(**{key: _num(ctx.get(key))})}, got {got}"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if err.get("input") is None and kind.endswith("_type"):
        return "must not be null (only optional fields take null)"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {got}"
    if kind in ("method_kind", "method_type"):  # raised by the recipe's method dispatch
        return str(err["msg"])
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"must be an integer, got {got}"
    if kind == "finite_number":
        return f"must be a finite number, got {got}"
    if kind in ("float_parsing", "float_type"):
        return f"must be a number, got {got}"
    if kind in ("bool_parsing", "bool_type"):
        return f"must be true or false, got {got}"
    if kind in ("string_type",):
        return f"must be a string, got {got}"
    if kind in ("list_type",):
        return f"must be a list, got {got}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping, got {got}"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} item(s), got {got}"
    if kind == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters long, got {got}"
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s), got {got}"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx.get('pattern')}, got {got}"
    if kind == "value_error":
        return excerpt_text(str(ctx.get("error", err["msg"])))
    return f"{err['msg']}, got {got}"


def excerpt_text(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters, control characters escaped: it stays one line."""
    cut = text if len(text) <= limit else text[: limit - 3] + "..."
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)


def _num(v: Any) -> Any:
    """0.0 -> 0 so messages read `must be > 0`, as a person writes it."""
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _section_model(loc: tuple, data: Any) -> type[BaseModel] | None:
    """The recipe section model that holds the key at ``loc`` (its last part), following the
    raw ``data`` where the model depends on it (``method`` by its ``kind``); None if unknown."""
    from pipeline.recipe._methods import _METHOD_CONFIGS, MethodConfig

    model: type[BaseModel] | None = Recipe
    for part in loc[:-1]:
        if isinstance(part, int):
            data = data[part] if isinstance(data, list) and part < len(data) else None
            continue
        if model is None or part not in model.model_fields:
            return None
        data = data.get(part) if isinstance(data, dict) else None
        found = [c for c in _models_in(model.model_fields[part].annotation)]
        if any(issubclass(c, MethodConfig) for c in found):
            kind = data.get("kind", "wsn") if isinstance(data, dict) else None
            found = [_METHOD_CONFIGS[kind]] if isinstance(kind, str) and \
                kind in _METHOD_CONFIGS else []
        model = found[0] if found else None
    return model


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation names (through lists, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def format_validation_error(exc: ValidationError, source: str = "recipe",
                            data: Any = None) -> str:
    """All errors of a ValidationError, one line each, first line prefixed by the source.
    ``data`` (the raw recipe) lets an unknown key suggest the closest known one."""
    lines = []
    errors = exc.errors()
    for err in errors[:MAX_ERRORS]:
        loc = ".".join(excerpt_text(str(p), 60) for p in err["loc"])
        text = _describe(err)
        if err["type"] == "extra_forbidden" and err["loc"]:
            model = _section_model(tuple(err["loc"]), data)
            if model is not None:
                text += did_you_mean(str(err["loc"][-1]), model.model_fields)
        lines.append(f"{loc or '<top>'}: {text}")
    if len(errors) > MAX_ERRORS:
        lines.append(f"and {len(errors) - MAX_ERRORS} more error(s)")
    return f"{source}: " + "; ".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``key.sub=value`` -> (["key", "sub"], value parsed as a YAML scalar or flow value).

    A value that is not valid YAML is taken as the string it is; one that parses but breaks the
    reader's limits (too deep, too big, duplicate keys) is an error.
    """
    if "=" not in text:
        raise RecipeError(f"--set expects key=value, got {excerpt(text)}")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if not key.strip() or len(path) > MAX_DEPTH or not all(path):
        raise RecipeError(f"--set expects key=value with a dotted key of at most {MAX_DEPTH} "
                          f"non-empty parts, got {excerpt(text)}")
    try:
        value = load_yaml(raw) if raw.strip() else ""
    except YAMLRejected as exc:
        raise RecipeError(f"--set {excerpt_text(key, 60)}: {exc.problem}") from None
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--set`` overrides to raw recipe data (a copy is returned)."""
    data = _plain_copy(data)
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                node = node[_index(part, path[: i + 1], len(node))]
            else:
                node = node.setdefault(part, {})
            if not isinstance(node, dict | list):
                raise RecipeError(f"--set {excerpt_text(text, 60)}: "
                                  f"{excerpt_text('.'.join(path[: i + 1]), 80)} is not a section")
        last = path[-1]
        if isinstance(node, list):
            node[_index(last, path, len(node))] = value
        else:
            node[last] = value
    return data


def _plain_copy(data: Any) -> Any:
    """A deep copy of plain data in which aliased parts are no longer shared, so an override of
    one does not change the other (the reader bounds the size this expands to)."""
    if isinstance(data, dict):
        return {k: _plain_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_plain_copy(v) for v in data]
    return data


def _index(part: str, path: list[str], size: int) -> int:
    if not (part.isascii() and part.isdigit() and len(part) < 10) or int(part) >= size:
        raise RecipeError(f"--set: {excerpt_text('.'.join(path), 80)} is not an index into a "
                          f"list of {size}")
    return int(part)


def recipe_from_dict(data: Any, source: str = "recipe") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a YAML mapping, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        raise RecipeError(format_validation_error(exc, source, data)) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe file."""
    path = Path(path)
    data = read_recipe_data(path)
    if overrides:
        if not isinstance(data, dict):
            raise RecipeError(f"{path}: a recipe must be a YAML mapping")
        data = apply_overrides(data, overrides)
    return recipe_from_dict(data, str(path))


def read_recipe_data(path: Path) -> Any:
    """The plain data of a recipe file: UTF-8 text, one YAML document within the reader's
    limits; RecipeError (one line, naming the file) otherwise."""
    try:
        if not path.is_file():
            raise RecipeError(f"{path}: no such recipe file")
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise RecipeError(f"{path}: the recipe file must be readable, found {exc.strerror}"
                          ) from None
    if len(raw) > MAX_BYTES:
        raise RecipeError(f"{path}: a recipe must be at most {MAX_BYTES} bytes, found more")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: a recipe must be UTF-8 text, found byte "
                          f"0x{raw[exc.start]:02x} at offset {exc.start} (a binary file, or "
                          "another encoding such as Latin-1?)") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = excerpt_text(str(getattr(exc, "problem", None) or "malformed YAML"))
        what = "rejected" if isinstance(exc, YAMLRejected) else "malformed"
        raise RecipeError(f"{path}: {what} YAML{where}: {problem}") from None
    if data is None:
        raise RecipeError(f"{path}: the file is empty")
    return data


def recipe_to_dict(recipe: Recipe) -> dict[str, Any]:
    return recipe.model_dump(mode="json")


def recipe_to_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe (defaults filled in); loading it gives the same recipe."""
    return dump_yaml(recipe_to_dict(recipe))


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
