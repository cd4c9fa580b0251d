"""Every continual method side by side on one stream: ACC, BWT, FWT, density, bytes, latency, time.

    .venv/bin/python benchmarks/methods.py --table A [--methods wsn tsn ...] [--seeds 0 1 2]
    .venv/bin/python benchmarks/methods.py --table B [--methods ...] [--seeds 0]
    .venv/bin/python benchmarks/methods.py --table A --quick        # a smoke run, minutes
    .venv/bin/python benchmarks/methods.py --table B ... --resume   # a killed run goes on

Table A: Split-MNIST and Split Fashion-MNIST (5 x 2 classes), MLP 784-400-400. Table B: PMNIST-10,
MLP 784-2000-2000. Every row shares the stream, the data split, the seeds, the epoch budget and
the evaluation batch; a method's own settings are its recipe defaults plus ``METHOD_SETTINGS``
(chosen on validation data, never on test). Every accuracy is re-measured from the packed store
after every task and BWT is computed from those re-measurements. The latency column compiles the
last task of seed ``seeds[0]`` from the store for the host (TVM, tuned with ``--tune-trials``,
the committed plan) and measures it at batch 1 with one runtime thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.errors import PipelineError  # noqa: E402
from pipeline.export import export_tasks  # noqa: E402
from pipeline.methods import method_names  # noqa: E402
from pipeline.progress import Bars  # noqa: E402
from pipeline.recipe import recipe_from_dict  # noqa: E402
from pipeline.runner import RunResult, run_recipe  # noqa: E402
from pipeline.tracking import NoopTracker, build_tracker  # noqa: E402

# One density for every mask-based method so rows compare like with like; other settings are the
# methods' recipe defaults (docs/methods.md).
DENSITY = {"A": 0.3, "B": 0.15}
METHOD_SETTINGS: dict[str, dict[str, Any]] = {
    "tsn": {"policy": "split"},
}
DENSITY_FIELD = ("wsn", "tsn", "exssnet", "supsup")

TABLES: dict[str, dict[str, Any]] = {
    "A": {"streams": ["split_mnist", "split_fmnist"], "tasks": 5, "hidden": [400, 400],
          "epochs": 5, "batch_size": 64},
    "B": {"streams": ["permuted_mnist"], "tasks": 10, "hidden": [2000, 2000],
          "epochs": 8, "batch_size": 128},
}

# The papers' figures on the closest setting (docs/methods.md has the sources).
PAPER = {
    ("B", "clnp"): "98.42 ± 0.04 (CLNP, PMNIST-10, MLP 2000-2000: same setting)",
}


@dataclass
class Row:
    method: str
    stream: str
    runs: list[RunResult] = field(default_factory=list)
    latency_ms: float | None = None
    latency_note: str = ""


def recipe_for(table: str, stream: str, method: str, seed: int, quick: bool,
               overrides: dict[str, Any], tune_trials: int) -> dict[str, Any]:
    spec = TABLES[table]
    mcfg: dict[str, Any] = {"kind": method, **METHOD_SETTINGS.get(method, {})}
    if method in DENSITY_FIELD:
        mcfg["density"] = DENSITY[table]
    recipe: dict[str, Any] = {
        "name": f"methods-{table}-{stream}-{method}-s{seed}{'-quick' if quick else ''}",
        "benchmark": {"stream": stream, "tasks": spec["tasks"], "seed": seed,
                      "val_fraction": 0.1},
        "model": {"arch": "mlp", "hidden": spec["hidden"]},
        "method": mcfg,
        "train": {"optimizer": "adam", "lr": 1e-3, "epochs": spec["epochs"],
                  "batch_size": spec["batch_size"], "eval_batch_size": 1000, "seed": seed},
        "targets": [{"name": "host", "kind": "host", "backend": "tvm", "threads": 1,
                     "tune_trials": tune_trials}],
    }
    if quick:
        recipe["benchmark"].update(tasks=2, train_limit=2000, test_limit=500)
        recipe["train"]["epochs"] = 1
    for key, value in overrides.items():
        section, _, leaf = key.partition(".")
        if leaf:
            recipe.setdefault(section, {})[leaf] = value
        else:
            recipe[section] = value
    return recipe


def task_latency(r: RunResult) -> tuple[float | None, str]:
    """Median ms of the last committed task compiled from the store for the recipe's ``host``
    target (TVM, tuned, batch 1, one runtime thread)."""
    assert r.store_path is not None
    with tempfile.TemporaryDirectory(prefix="taskpack-methods-") as out:
        try:
            folders = export_tasks(r.store_path, [len(r.tasks) - 1], "host", None, Path(out))
        except PipelineError as exc:
            return None, str(exc).splitlines()[0]
        latency = json.loads((folders[0] / "manifest.json").read_text()).get("latency") or {}
    note = "" if latency.get("converged", True) else " (not converged)"
    return latency.get("median_ms"), note


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def examples_seen(r: RunResult) -> int | None:
    """Training examples the trainer drew (``train/examples_seen``), summed over tasks; None
    for a run resumed past tasks whose training report is gone."""
    seen = [rec.train.stats.get("examples_seen") if rec.train else None for rec in r.tasks]
    return None if any(v is None for v in seen) else int(sum(seen))  # type: ignore[arg-type]


COMPONENTS = ("base", "codes", "masks", "codebooks", "tensors", "metadata")
HEAD = ["stream", "method", "ACC (%)", "BWT", "FWT", "union density",
        *[f"{c} (B)" for c in COMPONENTS], "total (B)", "x dense fp32", "latency b1 (ms)",
        "train s", "examples seen", "paper"]


def table_head(table: str) -> str:
    return (f"\n## Table {table}\n\n| " + " | ".join(HEAD) + " |\n|" + "---|" * len(HEAD))


def table_row(table: str, row: Row) -> str:
    """One row, printed as soon as its seeds are done (a stopped run keeps what it measured)."""
    rs = row.runs
    first = rs[0].store_metrics
    seen = [examples_seen(r) for r in rs]
    cells = [
        row.stream, row.method, mean_sd([r.acc for r in rs]),
        mean_sd([r.bwt for r in rs]), mean_sd([r.matrix.fwt() for r in rs]),
        f"{first.get('store/union_density', float('nan')):.3f}",
        *[f"{int(first.get(f'store/bytes_{c}', 0)):,}" for c in COMPONENTS],
        f"{int(first['store/bytes_total']):,}", f"{first['store/ratio_to_dense_fp32']:.3f}",
        "-" if row.latency_ms is None else f"{row.latency_ms:.4f}{row.latency_note}",
        mean_sd([sum(t.train.seconds for t in r.tasks if t.train) for r in rs]),
        "-" if None in seen else f"{int(statistics.mean(s for s in seen if s)):,}",
        PAPER.get((table, row.method), "-"),
    ]
    line = "| " + " | ".join(cells) + " |"
    if row.latency_ms is None and row.latency_note:
        line += f"\n(no latency for {row.method} on {row.stream}: {row.latency_note})"
    return line


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--table", choices=sorted(TABLES), required=True)
    ap.add_argument("--methods", nargs="+", default=None,
                    help=f"default: every registered method ({', '.join(method_names())})")
    ap.add_argument("--seeds", nargs="+", type=int, default=None,
                    help="default: 0 1 2 for table A, 0 for table B")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="section.key=JSON value applied to every run, e.g. train.threads=1")
    ap.add_argument("--streams", nargs="+", default=None,
                    help="a subset of the table's streams (one process per stream, in parallel)")
    ap.add_argument("--tune-trials", type=int, default=32)
    ap.add_argument("--no-latency", action="store_true")
    ap.add_argument("--track", action="store_true", help="track every run in MLflow")
    ap.add_argument("--quick", action="store_true", help="2 tiny tasks, 1 epoch: a smoke run")
    ap.add_argument("--resume", action="store_true",
                    help="continue each run from its committed tasks (default: start fresh)")
    args = ap.parse_args()
    methods = args.methods or list(method_names())
    unknown = sorted(set(methods) - set(method_names()))
    if unknown:
        print(f"error: unknown method(s) {unknown}; registered: {list(method_names())}")
        return 2
    seeds = args.seeds or ([0, 1, 2] if args.table == "A" else [0])
    overrides = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            print(f"error: --set wants section.key=value, got {item!r}")
            return 2
        overrides[key] = json.loads(value) if value[:1] in "[{0123456789-tfn" else value
    print(f"# machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}; table {args.table}, seeds {seeds}")
    lines = [table_head(args.table)]
    for stream in args.streams or TABLES[args.table]["streams"]:
        for method in methods:
            row = Row(method, stream)
            for seed in seeds:
                recipe = recipe_from_dict(recipe_for(args.table, stream, method, seed,
                                                     args.quick, overrides,
                                                     args.tune_trials))
                tracker = build_tracker(recipe.tracking) if args.track else NoopTracker()
                with Bars() as bars:
                    row.runs.append(run_recipe(recipe, tracker, bars, fresh=not args.resume))
                r = row.runs[-1]
                print(f"{stream} {method} seed {seed}: ACC {r.acc:.2f} BWT {r.bwt:+.3f} "
                      f"({r.wall_s:.0f} s)", flush=True)
            if not args.no_latency:
                row.latency_ms, row.latency_note = task_latency(row.runs[0])
            lines.append(table_row(args.table, row))
            print(lines[-1], flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
