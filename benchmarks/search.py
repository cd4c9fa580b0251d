"""Search benchmark: run a recipe with the per-task search, then measure side by side, per task,
the selected point against the same task's subnetwork built by TVM tuned dense and by ONNX Runtime.

    .venv/bin/python -m benchmarks.search [--recipe recipes/pmnist-mlp2000-x86.yaml]
                                          [--set key=value ...] [--no-track]

Per task it prints: validation accuracy of the uncompressed task and of the selected point, test
accuracy from the store, latency at the recipe's ``search.latency_batch`` (1 by default) of the
selected point's build (the target's transforms, tuned) vs TVM tuned dense and ONNX Runtime on
the same weights as a dense matrix, the task's bytes in the store against the dense fp32 model;
then search wall time, trials per hour, and
the hit rates of the latency cache and of the tuning database.
All latencies are measured in this run on this machine, same input: the three builds of a task
are measured in turn, three rounds, and each reports the median of its three medians.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.latency import onnx_model  # noqa: E402
from compilers import CompileOptions, get_compiler, measure  # noqa: E402
from pipeline.evaluation import committed_snapshot  # noqa: E402
from pipeline.progress import Bars  # noqa: E402
from pipeline.recipe import load_recipe  # noqa: E402
from pipeline.runner import prepare, run_recipe  # noqa: E402
from pipeline.store import PackedStore  # noqa: E402
from pipeline.subnet import task_module  # noqa: E402
from pipeline.targets import find_target, to_target  # noqa: E402
from pipeline.tracking import NoopTracker, build_tracker  # noqa: E402
from search import SearchCompressor  # noqa: E402

ROUNDS = 3  # interleaved measurement rounds per task


def interleaved_ms(models: list, example: torch.Tensor, rounds: int = ROUNDS) -> list[float]:
    """Per model, the median over ``rounds`` of its measured median (ms); the models are measured
    in turn, round after round, so a slow phase of the machine hits all of them alike."""
    per_model: list[list[float]] = [[] for _ in models]
    for _ in range(rounds):
        for i, m in enumerate(models):
            per_model[i].append(measure(m, example).median_ms)
    return [statistics.median(v) for v in per_model]


def dense_fp32_bytes(module: torch.nn.Module) -> int:
    """Bytes of the task's uncompressed subnetwork as the dense fp32 model a dense build runs."""
    return sum(4 * p.numel() for p in module.parameters())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", type=Path, default=REPO / "recipes/pmnist-mlp2000-x86.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--no-track", action="store_true")
    args = ap.parse_args()
    recipe = load_recipe(args.recipe, args.overrides)
    tracker = NoopTracker() if args.no_track else build_tracker(recipe.tracking)
    with Bars() as bars:
        result = run_recipe(recipe, tracker, bars, fresh=True,
                            compressor=SearchCompressor(recipe))
    target_cfg = find_target(recipe, recipe.search.target)
    target, tvm = to_target(target_cfg), get_compiler("tvm")
    cache = recipe.tuning_dir
    store = PackedStore.open(result.store_path)
    report = store.report()
    model = prepare(recipe).model  # same architecture; weights come from the store
    example = None
    print(f"# {recipe.name}: {len(result.tasks)} tasks, {recipe.search.trials} trials/task, "
          f"sampler {recipe.search.sampler}, target {target_cfg.name} "
          f"(tune_trials {target_cfg.tune_trials}, transforms {target_cfg.transforms})")
    print(f"# machine: {platform.machine()}, torch {torch.get_num_threads()} threads; "
          f"batch {recipe.search.latency_batch}; "
          f"latencies: median of {ROUNDS} interleaved measurements")
    print("\n| task | val acc uncompressed | val acc selected | drop | test acc (store) | "
          "selected ms | TVM tuned dense ms | ORT dense ms | vs TVM dense | vs ORT | "
          "task bytes in store | dense fp32 bytes / task bytes |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    trials = wall = hits = workloads = tuned = 0.0
    for rec in result.tasks:
        t, c = rec.index, rec.compression
        model.add_task(int(store.task_meta(t)["num_classes"]))
        module = task_module(model, committed_snapshot(store, t), t)
        if example is None:
            # the search's batch (>= 2 for stateless BN, which normalizes with batch statistics)
            shape = (recipe.search.latency_batch, *prepare(recipe).stream.input_shape)
            example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        builds = [
            tvm.compile(module, example, target, CompileOptions(
                transforms=tuple(target_cfg.transforms), tune_trials=target_cfg.tune_trials,
                cache_dir=cache)),
            tvm.compile(module, example, target, CompileOptions(
                tune_trials=target_cfg.tune_trials, cache_dir=cache)),
            onnx_model(module, example, target_cfg.threads)]
        if t == 0:
            print("# runtime threads: selected {}, TVM dense {}, ORT {}".format(
                *(b.threads for b in builds)))
        sel, dense, ort = interleaved_ms(builds, example)
        ref, got = c.get("search_reference_val_acc", float("nan")), c.get(
            "search_chosen_val_acc", float("nan"))
        print(f"| {t} | {ref:.2f} | {got:.2f} | {ref - got:+.2f} | {rec.acc_at_commit:.2f} | "
              f"{sel:.4f} | {dense:.4f} | {ort:.4f} | "
              f"{dense / sel:.2f}x | {ort / sel:.2f}x | "
              f"{report.tasks[t].bytes_total:,} | "
              f"{dense_fp32_bytes(module) / report.tasks[t].bytes_total:.1f}x |")
        trials += c.get("search_trials", 0.0)
        wall += c.get("search_wall_s", 0.0)
        hits += c.get("search_cache_hits", 0.0)
        workloads += c.get("search_tuning_workloads", 0.0)
        tuned += c.get("search_tuning_tuned", 0.0)
    print(f"\nACC {result.acc:.2f}%  BWT {result.bwt:+.3f}  store {report.file_size:,} B "
          f"({report.ratio_to_dense_fp32:.4f} x dense fp32)  "
          f"run wall {result.wall_s / 60:.1f} min")
    print(f"search: {trials:.0f} trials in {wall / 60:.1f} min "
          f"({3600 * trials / max(wall, 1e-9):.0f} trials/hour), latency-cache hit rate "
          f"{hits / max(trials, 1):.0%}, tuning-database hit rate "
          f"{1 - tuned / max(workloads, 1):.0%} ({tuned:.0f} of {workloads:.0f} dense workloads "
          f"of fresh builds had to be tuned)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
