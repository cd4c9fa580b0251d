"""What the run report shows, read back from the run folder (never from a live process), so the
page can be rebuilt at any time: at the end of a run, and after ``taskpack export`` adds bundles.

Sources: ``recipe.yaml`` (the resolved recipe), ``results.json`` (matrix, ACC/BWT/FWT, store
totals), ``progress.json`` (per-task records, the search's chosen point among them), the store
(bytes by component), ``search/task-<k>/pareto.json`` (each searched task's front, as the search
drew it) and bundle manifests whose store hash is this store's.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import InputError, StoreError
from pipeline.export import store_hash
from pipeline.recipe import Recipe, load_recipe
from pipeline.store import PackedStore, StoreReport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundleInfo:
    """An exported bundle of this store: ``<root>/<target>/task-<k>/``."""

    target: str
    task: int
    folder: Path
    latency: dict | None  # the manifest's measurement; None for export-only targets
    tuned: bool


@dataclass
class RunFiles:
    run_dir: Path
    recipe: Recipe
    summary: dict[str, float]
    matrix: list[list[float | None]]
    names: list[str]
    records: list[dict] = field(default_factory=list)  # progress.json, per task
    store: StoreReport | None = None
    fronts: dict[int, dict] = field(default_factory=dict)  # task -> pareto.json
    bundles: list[BundleInfo] = field(default_factory=list)

    @property
    def num_tasks(self) -> int:
        return len(self.names)

    def record(self, task: int) -> dict:
        return self.records[task] if task < len(self.records) else {}

    def compression(self, task: int) -> dict[str, float]:
        return self.record(task).get("compression", {})


def store_path_of(recipe: Recipe, run_dir: Path) -> Path:
    """Where a run keeps its store (the recipe's ``store.path``, else ``store.tpk`` in it)."""
    return recipe.store.path or run_dir / "store.tpk"


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read ({exc})") from None


def collect(run_dir: Path, exports: Sequence[Path] = ()) -> RunFiles:
    """Everything the report shows; bundles are looked for under ``exports`` and under
    ``<output_dir>/../exports`` (``taskpack export``'s default ``--out``)."""
    results = run_dir / "results.json"
    if not results.is_file():
        raise InputError(f"{run_dir}: no results.json; a report needs a finished run")
    recipe = load_recipe(run_dir / "recipe.yaml")
    res = _json(results)
    progress = run_dir / "progress.json"
    records = _json(progress).get("records", []) if progress.is_file() else []
    files = RunFiles(run_dir, recipe, res.get("summary", {}), res.get("matrix", []),
                     res.get("tasks", []), records)
    store_path = store_path_of(recipe, run_dir)
    try:
        files.store = PackedStore.open(store_path).report()
    except (OSError, StoreError) as exc:
        log.warning("report without the store's bytes: %s", exc)
    for t in range(files.num_tasks):
        front = run_dir / "search" / f"task-{t}" / "pareto.json"
        if front.is_file():
            files.fronts[t] = _json(front)
    if store_path.is_file():
        roots = [*exports, recipe.output_dir.parent / "exports"]
        files.bundles = find_bundles(roots, store_hash(store_path))
    return files


def find_bundles(roots: Sequence[Path], wanted_hash: str) -> list[BundleInfo]:
    """Bundles under ``roots`` (``<root>/<target>/task-<k>/manifest.json``) of this store."""
    seen: set[Path] = set()
    out = []
    for root in roots:
        for manifest in sorted(Path(root).glob("*/task-*/manifest.json")):
            folder = manifest.parent.resolve()
            if folder in seen:
                continue
            seen.add(folder)
            try:
                m = json.loads(manifest.read_text())
            except (OSError, ValueError):
                continue
            if m.get("store_hash") != wanted_hash:
                continue
            out.append(BundleInfo(str((m.get("target") or {}).get("name", folder.parent.name)),
                                  int(m.get("task", -1)), folder, m.get("latency"),
                                  bool(m.get("tuned"))))
    return sorted(out, key=lambda b: (b.target, b.task))


def number(value: object) -> float:
    """A JSON number as float; NaN for missing or null."""
    return float(value) if isinstance(value, int | float) else math.nan
