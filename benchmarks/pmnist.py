"""PMNIST benchmark: run recipes/pmnist-mlp2000.yaml and print accuracy per task, ACC, BWT, time.

    .venv/bin/python benchmarks/pmnist.py [--recipe PATH] [--set key=value ...] [--no-track]

Every figure is measured in this run: the accuracy of every task is re-tested from committed state
after every later task, and BWT is computed from those re-measurements.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.progress import Bars  # noqa: E402
from pipeline.recipe import load_recipe  # noqa: E402
from pipeline.runner import run_recipe  # noqa: E402
from pipeline.tracking import NoopTracker, build_tracker  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes/pmnist-mlp2000.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--no-track", action="store_true")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, args.overrides)
    tracker = NoopTracker() if args.no_track else build_tracker(recipe.tracking)
    with Bars() as bars:
        result = run_recipe(recipe, tracker, bars)
    print(f"# {recipe.name}: {recipe.benchmark.stream}, {len(result.tasks)} tasks, "
          f"MLP {recipe.model.hidden}, method {recipe.method.kind} "
          f"(density {getattr(recipe.method, 'density', '-')}), "
          f"{recipe.train.epochs} epochs/task, batch {recipe.train.batch_size}")
    print(f"# machine: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print("| task | acc right after training (%) | acc after all tasks (%) | epochs | train s |")
    print("|---:|---:|---:|---:|---:|")
    final = result.matrix.final
    for rec in result.tasks:
        print(f"| {rec.index} | {result.matrix.rows[rec.index][rec.index]:.2f} | "
              f"{final[rec.index]:.2f} | {rec.train.epochs} | {rec.train.seconds:.0f} |")
    print(f"\nACC {result.acc:.2f}%   BWT {result.bwt:+.3f}   FWT {result.matrix.fwt():+.2f}   "
          f"wall {result.wall_s / 60:.1f} min")
    print(f"run folder: {result.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
