"""PMNIST benchmark: run recipes/pmnist-mlp2000.yaml; print accuracy per task, ACC, BWT, wall
time, and the packed store's bytes by component with the ratio to one dense fp32 backbone.

    .venv/bin/python benchmarks/pmnist.py [--recipe PATH] [--set key=value ...]
                                          [--compare-policies] [--no-track] [--resume]

``--compare-policies`` runs the recipe twice, with ``method.policy=split`` and
``method.policy=reuse_only``, and prints them side by side (what splitting a weight buys).
``--policy P`` runs only the ``P`` half of that comparison (same run folder), so the two halves
can run in two processes at once (``--set train.threads=1`` each on a 2-core machine); then
``--compare-policies --resume`` prints both without training anything again.
Every figure is measured in this run: each task is re-tested from the store after every later
task, and BWT is computed from those re-measurements; bytes are the store file's real bytes.
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.models import kernel_name  # noqa: E402
from pipeline.progress import Bars  # noqa: E402
from pipeline.recipe import load_recipe  # noqa: E402
from pipeline.runner import RunResult, run_recipe  # noqa: E402
from pipeline.tracking import NoopTracker, build_tracker  # noqa: E402

POLICIES = ("split", "reuse_only")
COMPONENTS = ("codes", "masks", "codebooks", "tensors", "metadata", "base")


def run(recipe_path: Path, overrides: list[str], track: bool, resume: bool = False) -> RunResult:
    recipe = load_recipe(recipe_path, overrides)
    tracker = build_tracker(recipe.tracking) if track else NoopTracker()
    with Bars() as bars:
        return run_recipe(recipe, tracker, bars, fresh=not resume)


def describe(r: RunResult) -> str:
    rc = r.recipe
    m = rc.method
    extra = f", policy {m.policy}" if m.kind == "tsn" else ""
    net = rc.model
    model = (f"MLP {net.hidden} (dropout {net.dropout})" if net.arch == "mlp"
             else f"{net.arch} (norm {net.norm})")
    return (f"{rc.benchmark.stream}, {len(r.tasks)} tasks, {model}, "
            f"{m.kind} density {m.density}{extra}, "
            f"{rc.train.epochs} epochs/task, batch {rc.train.batch_size}")


def _minutes(seconds: list[float | None]) -> str:
    """The sum in minutes; '-' when a task's figure is missing (a resumed run)."""
    known = [v for v in seconds if v is not None]
    return "-" if len(known) < len(seconds) else f"{sum(known) / 60:.1f}"


def print_results(results: dict[str, RunResult]) -> None:
    names = list(results)
    first = results[names[0]]
    print(f"# machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}")
    for name, r in results.items():
        print(f"# {name}: {describe(r)}")
    print("\n| task | " + " | ".join(f"{n}: acc after training | {n}: acc after all tasks"
                                     for n in names) + " |")
    print("|---:|" + "---:|---:|" * len(names))
    for t in range(len(first.tasks)):
        cells = []
        for r in results.values():
            cells += [f"{r.matrix.rows[t][t]:.2f}", f"{r.matrix.final[t]:.2f}"]
        print(f"| {t} | " + " | ".join(cells) + " |")
    print("\n| metric | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    rows = {"ACC (%)": lambda r: f"{r.acc:.2f}", "BWT": lambda r: f"{r.bwt:+.3f}",
            "FWT (GEM)": lambda r: f"{r.matrix.fwt():+.2f}",
            "wall (min)": lambda r: f"{r.wall_s / 60:.1f}",
            "training, all tasks (min)": lambda r: _minutes(
                [rec.train.seconds if rec.train else None for rec in r.tasks]),
            "compression passes, all tasks (min)": lambda r: _minutes(
                [rec.compression.get("compress_seconds") for rec in r.tasks]),
            "training device": lambda r: f"{torch.get_num_threads()} thread(s), "
                                         f"{kernel_name()} kernels"}
    for comp in COMPONENTS:
        rows[f"store {comp} (bytes)"] = (
            lambda r, c=comp: f"{int(r.store_metrics[f'store/bytes_{c}']):,}")
    rows["store total (bytes)"] = lambda r: f"{int(r.store_metrics['store/bytes_total']):,}"
    rows["ratio to one dense fp32 backbone"] = (
        lambda r: f"{r.store_metrics['store/ratio_to_dense_fp32']:.4f}")
    rows["union density"] = lambda r: f"{r.store_metrics['store/union_density']:.4f}"
    for label, fn in rows.items():
        print(f"| {label} | " + " | ".join(fn(r) for r in results.values()) + " |")
    for name, r in results.items():
        print(f"\n{name}: run folder {r.run_dir}, store {r.store_path}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes/pmnist-mlp2000.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--compare-policies", action="store_true")
    ap.add_argument("--no-track", action="store_true")
    ap.add_argument("--resume", action="store_true",
                    help="continue an interrupted run (figures of the tasks committed before "
                         "come from that run's re-measurements)")
    ap.add_argument("--policy", choices=POLICIES,
                    help="run one half of --compare-policies (in its run folder)")
    args = ap.parse_args()
    if args.compare_policies or args.policy:
        results = {}
        for policy in POLICIES if args.compare_policies else (args.policy,):
            overrides = [*args.overrides, f"method.policy={policy}",
                         f"name={load_recipe(args.recipe, args.overrides).name}-{policy}"]
            results[policy] = run(args.recipe, overrides, not args.no_track, args.resume)
    else:
        r = run(args.recipe, args.overrides, not args.no_track, args.resume)
        results = {r.recipe.method.kind: r}
    print_results(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
