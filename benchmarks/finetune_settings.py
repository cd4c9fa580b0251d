"""Which per-trial fine-tune recovers the most for its cost (chooses ``search.finetune_*``).

    .venv/bin/python benchmarks/finetune_settings.py --plans PARETO.csv [--recipe PATH]
        [--settings 0.25:1e-4 0.5:1e-4 0.25:3e-4 0.25:1e-3 1:1e-4] [--threads 2]

Trains task 0 of the recipe (its method and training settings), then applies each plan of
``PARETO.csv`` (a search's ``search/task-<t>/pareto.csv``; the dense row is skipped) as a search
trial does: prune without gating, fine-tune own weights for ``epochs`` at ``lr``, quantize to the
plan's widths. Prints, per plan, the validation accuracy drop from the uncompressed task and the
trial seconds of each setting, then per setting how many plans stay within 0.5 point and the
mean drop. Validation data only (10 % of the training split), never test.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch
from optuna.trial import FixedTrial

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.compress import CompressContext, task_tensors, trained_layers  # noqa: E402
from pipeline.data import build_stream  # noqa: E402
from pipeline.device import keep_freed_memory  # noqa: E402
from pipeline.methods import build_method  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.recipe import LayerPlan, load_recipe  # noqa: E402
from pipeline.train import train_task  # noqa: E402
from search import LayerSpace, apply_plan, resolve_space, suggest_plans  # noqa: E402


def read_plans(path: Path, space: dict[str, LayerSpace]) -> list[dict[str, LayerPlan]]:
    """The trials' plans of a ``pareto.csv``, read back as the search reads a chosen trial."""
    with path.open(newline="") as f:
        return [suggest_plans(FixedTrial(json.loads(row["plan"])), space)
                for row in csv.DictReader(f) if row["dense"] != "True"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plans", type=Path, required=True)
    ap.add_argument("--recipe", default=str(REPO / "recipes/pmnist-mlp2000-x86.yaml"))
    ap.add_argument("--settings", nargs="+", default=["0.25:1e-4", "0.5:1e-4", "0.25:3e-4",
                                                      "0.25:1e-3", "1:1e-4"],
                    help="epochs:lr pairs")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    settings = [(float(e), float(lr)) for e, lr in (s.split(":") for s in args.settings)]

    keep_freed_memory()
    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe)
    stream = build_stream(recipe.benchmark)
    task = stream.load(0)
    torch.manual_seed(recipe.train.seed)
    model = build_model(recipe.model, stream.input_shape)
    method = build_method(model, recipe)
    model.add_task(task.num_classes)
    method.begin_task(0, None, task)
    start = time.perf_counter()
    train_task(method, 0, task, recipe.train)
    print(f"# task 0 trained in {time.perf_counter() - start:.0f} s", flush=True)
    trained = trained_layers(method, 0, method.end_task(0))
    base = CompressContext(model, 0, task_tensors(model, 0), task, recipe.train.eval_batch_size)
    reference = base.accuracy(trained)
    print(f"# uncompressed validation accuracy {reference:.2f}; drop (points) and trial "
          f"seconds (prune, fine-tune, quantize) per setting (epochs, lr): {settings}", flush=True)
    drops: dict[tuple[float, float], list[float]] = {s: [] for s in settings}
    space = resolve_space(recipe.search.space, list(trained))
    for i, plan in enumerate(read_plans(args.plans, space)):
        cells = []
        for epochs, lr in settings:
            start = time.perf_counter()
            acc = apply_plan(base, trained, plan, epochs, lr, recipe.train.batch_size,
                             recipe.train.seed)[2]
            seconds = time.perf_counter() - start  # the trial: prune, fine-tune, quantize
            drops[(epochs, lr)].append(reference - acc)
            cells.append(f"{reference - acc:5.2f} ({seconds:.1f} s)")
        print(i, "  ".join(cells), flush=True)
    for (epochs, lr), d in drops.items():
        print(f"epochs {epochs} lr {lr}: {sum(x <= 0.5 for x in d)} of {len(d)} plans within "
              f"0.5 point, mean drop {sum(d) / max(len(d), 1):.2f}")


if __name__ == "__main__":
    main()
