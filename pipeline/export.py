"""``taskpack export``: compile committed tasks from a store into per-device bundles.

The store holds weights and, since its ``spec`` section, what rebuilding them needs: the model
section of the recipe, the input shape and each task's name, classes and preprocessing
(``pipeline.store_spec``). So ``export STORE`` works on a store alone; ``--recipe`` overrides it
(and is needed for stores written before the spec section). Each bundle is a folder
``<out>/<target>/task-<k>/`` with a compiled library per declared batch size, an ONNX model of the
task's subnetwork (any batch), the task's permutation where it has one (``permutation.npy``) and a
manifest that says how to feed it (compilers/export.py).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import InputError, PipelineError, did_you_mean
from pipeline.evaluation import committed_snapshot
from pipeline.models import build_model, model_fingerprint
from pipeline.recipe import Recipe, TargetConfig
from pipeline.store import PackedStore
from pipeline.store_spec import StoreSpec, TaskInfo, resolve_spec
from pipeline.subnet import task_module
from pipeline.targets import to_target

BUILTIN_TARGETS = {"host": TargetConfig(name="host", kind="host", backend="tvm"),
                   "aarch64": TargetConfig(name="aarch64", kind="aarch64", backend="tvm")}
DEFAULT_BATCH_SIZES = (1, 8)
PERMUTATION_FILE = "permutation.npy"


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
                     f"{[t.name for t in recipe.targets]} nor one of {sorted(BUILTIN_TARGETS)}"
                     + did_you_mean(name, [*(t.name for t in recipe.targets), *BUILTIN_TARGETS]))


def _spec_modules(store_path: Path, tasks: list[int] | None, recipe_path: Path | None):  # noqa: ANN202
    spec = resolve_spec(store_path, recipe_path)
    store = PackedStore.open(store_path, expect_fingerprint=model_fingerprint(
        spec.recipe.model, spec.input_shape))
    wanted = list(range(store.num_tasks)) if tasks is None else tasks
    # a shared head is built with the backbone (every task has the same class count)
    model = build_model(spec.recipe.model, spec.input_shape,
                        spec.tasks[0].num_classes if spec.tasks else None)
    for t in range(max(wanted) + 1 if wanted else 0):
        if t < store.num_tasks:
            model.add_task(int(store.task_meta(t).get("num_classes") or
                               spec.tasks[t].num_classes))
    # StoreError (exit 2) for a task id that does not exist
    modules = {t: task_module(model, committed_snapshot(store, t), t) for t in wanted}
    return spec, store, modules


def store_task_modules(store_path: Path, tasks: list[int] | None = None,
                       recipe_path: Path | None = None):  # noqa: ANN201
    """(recipe, input shape, {task: nn.Module}) for committed tasks of a store.

    The architecture comes from ``recipe_path`` when given, else from the store's spec section,
    else from the recipe beside the store (``recipe.yaml``); each module is the task's
    subnetwork rebuilt from the file.
    """
    spec, _, modules = _spec_modules(store_path, tasks, recipe_path)
    return spec.recipe, spec.input_shape, modules


def task_info(spec: StoreSpec, store: PackedStore, t: int,
              accuracy: dict[str, float]) -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest entries that say what task ``t``'s bundle computes, and its extra files."""
    info = spec.tasks[t] if t < len(spec.tasks) else TaskInfo(f"task-{t}", 0, {})
    meta = store.task_meta(t)
    classes = int(meta.get("num_classes") or info.num_classes)
    steps, files = [], {}
    for step in info.preprocess.get("steps", []):
        if "permutation" in step:  # a file beside the libraries, not 784 numbers in JSON
            buf = io.BytesIO()
            np.save(buf, np.asarray(step["permutation"], dtype=np.int64), allow_pickle=False)
            files[PERMUTATION_FILE] = buf.getvalue()
            step = {**step, "permutation": PERMUTATION_FILE}
        steps.append(step)
    labels = info.preprocess.get("classes")
    meaning_out = (f"unnormalised scores of task {t}'s {classes} classes; argmax is the "
                   "predicted label" + (f"; label j is original class classes[j] = {labels}"
                                        if labels else ""))
    return {
        "task_name": str(meta.get("name") or info.name),
        "num_classes": classes,
        "preprocessing": {"input": "uint8 images [N, C, H, W] as the data set stores them",
                          "steps": steps, **({"classes": labels} if labels else {})},
        "inputs": [{"meaning": "a batch of task images after the preprocessing steps, "
                               "float32 [batch, C, H, W]"}],
        "outputs": [{"meaning": meaning_out}],
        "accuracy": accuracy,
        "spec_source": spec.source,
    }, files


def committed_accuracy(store: PackedStore, store_path: Path, t: int) -> dict[str, float]:
    """Task ``t``'s accuracy (%) as committed: validation from the store's task meta, test at
    commit from the run's results.json when the store still sits in its run folder."""
    meta = store.task_meta(t)
    out: dict[str, float] = {}
    for key in ("acc_val_quantized", "acc_val_trained"):
        if isinstance(meta.get(key), int | float) and math.isfinite(float(meta[key])):
            out["val_committed" if key == "acc_val_quantized" else "val_trained"] = \
                float(meta[key])
    results = store_path.parent / "results.json"
    try:
        matrix = json.loads(results.read_text())["matrix"]
        out["test_at_commit"] = float(matrix[t][t])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        pass
    return out


def export_tasks(store_path: Path, tasks: list[int] | None, target_name: str,
                 recipe_path: Path | None, out: Path,
                 batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES) -> list[Path]:
    from compilers import CompilerError, export_bundle

    if not batch_sizes or min(batch_sizes) < 1 or max(batch_sizes) > 4096:
        raise InputError(f"--batch must be between 1 and 4096, found {list(batch_sizes)}")
    spec, store, modules = _spec_modules(store_path, tasks, recipe_path)
    if spec.recipe.model.norm == "stateless" and min(batch_sizes) < 2:
        raise InputError("model.norm 'stateless' normalizes with batch statistics, which one "
                         f"image does not have: --batch sizes must be >= 2, got "
                         f"{sorted(set(batch_sizes))}")
    target_cfg = resolve_target(spec.recipe, target_name)
    if target_cfg.backend != "tvm":
        raise InputError(f"target {target_name!r} uses backend {target_cfg.backend!r}; "
                         "bundles are compiled with tvm")
    digest = store_hash(store_path)
    example = torch.zeros(1, *spec.input_shape)
    folders = []
    for t, module in modules.items():
        info, files = task_info(spec, store, t, committed_accuracy(store, store_path, t))
        try:
            folders.append(export_bundle(
                module, example, to_target(target_cfg), out, task=t, store_hash=digest,
                transforms=tuple(target_cfg.transforms), tune_trials=target_cfg.tune_trials,
                cache_dir=spec.recipe.tuning_dir, threads=target_cfg.threads,
                batch_sizes=batch_sizes, info=info, extra_files=files))
        except CompilerError as exc:
            raise PipelineError(f"task {t}, target {target_name}: {exc}") from exc
    return folders


def describe_bundle(folder: Path) -> tuple[str, str | None]:
    """One line for the console, and a warning when the latency did not converge."""
    m = json.loads((folder / "manifest.json").read_text())
    lat = m.get("latency")
    speed = (f"median {lat['median_ms']:.4f} ms (p10 {lat['p10_ms']:.4f}, "
             f"p90 {lat['p90_ms']:.4f}) at batch {m['batch_sizes'][0]}" if lat else "export only")
    err = (m.get("numerics") or {}).get("max_rel_err")
    line = (f"{folder}: task {m['task']} ({m.get('task_name', '?')}), {speed}, batch sizes "
            f"{m['batch_sizes']}, numerics rel err {'n/a' if err is None else f'{err:.1e}'}")
    warning = None
    if m.get("latency_converged") is False:
        bad = {b: v["cv"] for b, v in (m.get("latency_by_batch") or {}).items()
               if not v["converged"]}
        warning = (f"warning: {folder}: the latency did not converge (coefficient of variation "
                   f"by batch: {', '.join(f'{b}: {cv:.2f}' for b, cv in bad.items())}); the "
                   "machine was busy, so treat these figures as rough and re-export on a quiet "
                   "machine")
    return line, warning
