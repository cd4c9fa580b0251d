"""The store's ``spec`` section: what exporting a task needs when only the store file is at hand.

Written once when a run creates its store (``PackedStore.create(spec=...)``): the resolved recipe
(model, targets, tracking), the input shape and, per task of the stream, its name, class count and
preprocessing as data (docs/store-format.md). ``taskpack export STORE`` rebuilds every task's
network from it, with no recipe file and no data set on the machine. Permutations (Permuted
MNIST) are kept as base64 of little-endian unsigned ints: exact, and ~2 kB per task rather than
the ~3.3 kB of a JSON list.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError, RecipeError, StoreError
from pipeline.recipe import Recipe, load_recipe, recipe_from_dict, recipe_to_dict
from pipeline.store import PackedStore

__all__ = ["SPEC_VERSION", "StoreSpec", "TaskInfo", "build_spec", "resolve_spec"]

SPEC_VERSION = 1


@dataclass(frozen=True)
class TaskInfo:
    """One task as a deployment sees it: name, classes and preprocessing steps (plain data)."""

    name: str
    num_classes: int
    preprocess: dict[str, Any]


@dataclass(frozen=True)
class StoreSpec:
    recipe: Recipe
    input_shape: tuple[int, ...]
    tasks: list[TaskInfo]
    source: str  # where it came from: "store spec" or the recipe's path


# Where this machine keeps things: not part of what a task is, so the store leaves them out (the
# same run in another folder writes the same bytes; the defaults apply when the spec is read).
_LOCAL_PATHS = {"": ("output_dir", "tuning_cache"), "benchmark": ("data_dir", "cache_dir"),
                "store": ("path",)}


def portable_recipe(recipe: Recipe) -> dict[str, Any]:
    """The recipe as a dict without its machine-local paths (``_LOCAL_PATHS``)."""
    out = recipe_to_dict(recipe)
    for section, keys in _LOCAL_PATHS.items():
        where = out.get(section, {}) if section else out
        for key in keys:
            if isinstance(where, dict):
                where.pop(key, None)
    return out


def build_spec(recipe: Recipe, stream: Any) -> dict[str, Any]:
    """The ``spec`` section's JSON object for a run of ``recipe`` over ``stream``."""
    return {
        "spec_version": SPEC_VERSION,
        "recipe": portable_recipe(recipe),
        "input_shape": [int(d) for d in stream.input_shape],
        "tasks": [{"name": name, "num_classes": int(n), "preprocess": _pack(pre)}
                  for name, n, pre in ((*stream.task_info(i), stream.task_preprocess(i))
                                       for i in range(len(stream)))],
    }


def resolve_spec(store_path: Path, recipe_path: Path | None) -> StoreSpec:
    """``--recipe`` when given, else the store's own spec, else ``recipe.yaml`` beside it."""
    if recipe_path is None:
        store = PackedStore.open(store_path)
        if store.spec() is not None:
            return _from_section(store.spec() or {}, str(store_path))
        recipe_path = store_path.parent / "recipe.yaml"
        if not recipe_path.is_file():
            raise InputError(f"{store_path}: the store carries no spec (written by an older "
                             "taskpack) and no recipe.yaml sits beside it; pass --recipe")
    return _from_recipe(load_recipe(recipe_path), str(recipe_path))


def _from_recipe(recipe: Recipe, source: str) -> StoreSpec:
    from pipeline.data import build_stream

    stream = build_stream(recipe.benchmark)  # needs the data set (its checks run here)
    tasks = [TaskInfo(*stream.task_info(i), stream.task_preprocess(i))
             for i in range(len(stream))]
    return StoreSpec(recipe, tuple(stream.input_shape), tasks, source)


def _from_section(spec: dict[str, Any], where: str) -> StoreSpec:
    if spec.get("spec_version") != SPEC_VERSION:
        raise StoreError(f"{where}: section 'spec' must have spec_version {SPEC_VERSION}, found "
                         f"{spec.get('spec_version')!r}; pass --recipe")
    try:
        recipe = recipe_from_dict(spec["recipe"], f"{where} (section 'spec')")
        shape = tuple(int(d) for d in spec["input_shape"])
        tasks = [TaskInfo(str(t["name"]), int(t["num_classes"]), _unpack(t["preprocess"]))
                 for t in spec["tasks"]]
    except RecipeError as exc:
        raise StoreError(f"{exc}; pass --recipe") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise StoreError(f"{where}: section 'spec' must hold recipe, input_shape and tasks, "
                         f"found a problem: {exc!r}") from None
    if len(shape) != 3 or min(shape) < 1 or any(t.num_classes < 1 for t in tasks):
        raise StoreError(f"{where}: section 'spec' must hold a (C, H, W) input shape and "
                         f"tasks with >= 1 class, found {shape}")
    return StoreSpec(recipe, shape, tasks, "store spec")


def _pack(preprocess: dict[str, Any]) -> dict[str, Any]:
    steps = []
    for step in preprocess.get("steps", []):
        if "permutation" in step:
            perm = np.asarray(step["permutation"])
            dtype = "<u2" if len(perm) <= 1 << 16 else "<u4"
            step = {**step, "permutation": {
                "dtype": dtype, "base64": base64.b64encode(perm.astype(dtype).tobytes()).decode()}}
        steps.append(step)
    return {**preprocess, "steps": steps}


def _unpack(preprocess: dict[str, Any]) -> dict[str, Any]:
    steps = []
    for step in preprocess.get("steps", []):
        if "permutation" in step:
            packed = step["permutation"]
            if packed.get("dtype") not in ("<u2", "<u4"):
                raise ValueError(f"permutation dtype must be <u2 or <u4, found {packed!r:.40}")
            perm = np.frombuffer(base64.b64decode(packed["base64"], validate=True),
                                 packed["dtype"]).astype(np.int64)
            if not np.array_equal(np.sort(perm), np.arange(len(perm))):
                raise ValueError("permutation must hold each index once")
            step = {**step, "permutation": perm.tolist()}
        steps.append(step)
    return {**preprocess, "steps": steps}
