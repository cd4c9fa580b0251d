"""``taskpack export``: compile committed tasks from a store into per-device bundles.

The store holds weights, not architecture; the architecture comes from the run's resolved
recipe (``recipe.yaml`` beside the store unless ``--recipe`` says otherwise). Each bundle is a
folder ``<out>/<target>/task-<k>/`` with the compiled library, an ONNX model of the task's
subnetwork and a manifest (task, target, latency with spread, TVM version, store hash, numerics).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from pipeline.data import build_stream
from pipeline.errors import InputError, PipelineError
from pipeline.evaluation import committed_snapshot
from pipeline.models import build_model, model_fingerprint
from pipeline.recipe import Recipe, TargetConfig, load_recipe
from pipeline.store import PackedStore
from pipeline.subnet import task_module
from pipeline.targets import to_target

BUILTIN_TARGETS = {"host": TargetConfig(name="host", kind="host", backend="tvm"),
                   "aarch64": TargetConfig(name="aarch64", kind="aarch64", backend="tvm")}


def store_hash(path: Path) -> str:
    """A store's identity in bundle manifests: the first 16 hex digits of its sha256."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def resolve_target(recipe: Recipe, name: str) -> TargetConfig:
    for t in recipe.targets:
        if t.name == name:
            return t
    if name in BUILTIN_TARGETS:
        return BUILTIN_TARGETS[name]
    raise InputError(f"--target {name!r} is neither a target of the recipe "
                     f"{[t.name for t in recipe.targets]} nor one of {sorted(BUILTIN_TARGETS)}")


def store_task_modules(store_path: Path, tasks: list[int] | None = None,
                       recipe_path: Path | None = None):  # noqa: ANN201
    """(recipe, input shape, {task: nn.Module}) for committed tasks of a store.

    The architecture comes from the recipe beside the store (``recipe.yaml``) unless
    ``recipe_path`` says otherwise; each module is the task's subnetwork rebuilt from the file.
    """
    recipe_path = recipe_path or store_path.parent / "recipe.yaml"
    if not recipe_path.is_file():
        raise InputError(f"{recipe_path}: no recipe beside the store; pass --recipe")
    recipe = load_recipe(recipe_path)
    stream = build_stream(recipe.benchmark)
    store = PackedStore.open(store_path, expect_fingerprint=model_fingerprint(
        recipe.model, stream.input_shape))
    wanted = list(range(store.num_tasks)) if tasks is None else tasks
    model = build_model(recipe.model, stream.input_shape, stream.task_info(0)[1])  # shared head
    for t in range(max(wanted) + 1 if wanted else 0):
        if t < store.num_tasks:
            model.add_task(int(store.task_meta(t).get("num_classes") or
                               stream.task_info(t)[1]))
    # StoreError (exit 2) for a task id that does not exist
    modules = {t: task_module(model, committed_snapshot(store, t), t) for t in wanted}
    return recipe, tuple(stream.input_shape), modules


def export_tasks(store_path: Path, tasks: list[int] | None, target_name: str,
                 recipe_path: Path | None, out: Path) -> list[Path]:
    from compilers import CompilerError, export_bundle

    recipe, input_shape, modules = store_task_modules(store_path, tasks, recipe_path)
    target_cfg = resolve_target(recipe, target_name)
    if target_cfg.backend != "tvm":
        raise InputError(f"target {target_name!r} uses backend {target_cfg.backend!r}; "
                         "bundles are compiled with tvm")
    digest = store_hash(store_path)
    example = torch.randn(1, *input_shape, generator=torch.Generator().manual_seed(0))
    folders = []
    for t, module in modules.items():
        try:
            folders.append(export_bundle(
                module, example, to_target(target_cfg), out, task=t, store_hash=digest,
                transforms=tuple(target_cfg.transforms), tune_trials=target_cfg.tune_trials,
                cache_dir=recipe.output_dir.parent / "tvm-cache"))
        except CompilerError as exc:
            raise PipelineError(f"task {t}, target {target_name}: {exc}") from exc
    return folders
