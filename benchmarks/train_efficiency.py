"""Training cost of RigL masks and the training-efficiency plugins (docs/training.md).

    .venv/bin/python benchmarks/train_efficiency.py [--recipe PATH] [--tasks N]
                                                    [--train-limit N] [--epochs N]

Runs the recipe (default recipes/pmnist-wsn-rigl.yaml) once per row: WSN's learned top-c mask and
RigL's rewired mask, each without plugins and with SparCL's data removal + gradient masking and
SPFDE's layer freezing, and WSN with SPFDE's data sieving; prints ACC and BWT (re-measured from the
store), and summed over the tasks the examples seen, the analytic backward FLOPs and the train
seconds each run logged. Every figure is measured in this run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.recipe import load_recipe, recipe_from_dict  # noqa: E402
from pipeline.runner import run_recipe  # noqa: E402
from pipeline.tracking import NoopTracker  # noqa: E402

PLUGINS: list[dict[str, Any]] = [
    {"kind": "data_removal", "fraction": 0.3, "at_epochs": [1, 2]},
    {"kind": "gradient_masking", "keep": 0.8, "interval": 30},
    {"kind": "layer_freezing", "warmup_epochs": 1, "tolerance": 0.05},
]
ROWS: list[tuple[str, str, list[dict[str, Any]]]] = [
    ("wsn topk", "topk", []),
    ("wsn rigl", "rigl", []),
    ("wsn topk + removal, grad masking, freezing", "topk", PLUGINS),
    ("wsn rigl + removal, grad masking, freezing", "rigl", PLUGINS),
    ("wsn topk + sieving 0.6", "topk", [{"kind": "data_sieving", "keep": 0.6}]),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes" / "pmnist-wsn-rigl.yaml")
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--train-limit", type=int, default=6000)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    base = load_recipe(args.recipe).model_dump()
    print(f"{args.recipe.name}: {args.tasks} tasks, train_limit {args.train_limit}, "
          f"{args.epochs} epochs")
    print("| row | ACC % | BWT | examples seen | backward GFLOPs | train s |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="taskpack-efficiency-") as out:
        for i, row in enumerate(ROWS):
            print(_run(base, args, i, *row, Path(out)), flush=True)


def _run(base: dict[str, Any], args: argparse.Namespace, i: int, label: str, mask: str,
         plugins: list[dict[str, Any]], out: Path) -> str:
    """One row: the recipe with ``mask`` and ``plugins``, run fresh under ``out``."""
    data = {**base, "name": f"efficiency-{i}", "output_dir": str(out)}
    data["benchmark"] = {**data["benchmark"], "tasks": args.tasks,
                         "train_limit": args.train_limit}
    data["method"] = {**data["method"], "mask": mask}
    data["train"] = {**data["train"], "epochs": args.epochs, "plugins": plugins}
    tracker = NoopTracker()
    result = run_recipe(recipe_from_dict(data), tracker=tracker, fresh=True)
    tasks = tracker.runs[0].children
    seen = sum(t.metrics["train/examples_seen"] for t in tasks)
    flops = sum(t.metrics["train/backward_flops"] for t in tasks) / 1e9
    secs = sum(t.metrics["train_seconds"] for t in tasks)
    return (f"| {label} | {result.acc:.2f} | {result.bwt:.3f} | {seen:.0f} | {flops:.1f} | "
            f"{secs:.1f} |")


if __name__ == "__main__":
    main()
