"""Many tasks in one network (table C): SupSup without the task id, next to wsn and tsn with it.

    .venv/bin/python benchmarks/many_tasks.py [--tasks 100] [--methods supsup wsn tsn]
    .venv/bin/python benchmarks/many_tasks.py --methods wsn --tasks 100     # one row per process
    .venv/bin/python benchmarks/many_tasks.py --resume                      # print finished runs

Every row learns the same stream (``recipes/pmnist100-supsup.yaml``: Permuted MNIST, MLP
784-300-100 with one shared masked head, batch 128, one epoch per task, 30 % density per task).
``supsup`` is evaluated as the recipe says (task inferred: One-Shot, a batch of 128 test images
labelled by its first image); its store is then re-tested with the task id given, from the store,
so both figures describe one set of committed tasks. ``wsn`` and ``tsn`` (TSN's pruning and
quantization passes) are evaluated with the task given. Bytes are the store file's, by component,
and per task (the mean over tasks of what ``taskpack inspect`` lists for a task).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.data import build_stream  # noqa: E402
from pipeline.evaluation import _acc_loss  # noqa: E402
from pipeline.export import store_task_modules  # noqa: E402
from pipeline.progress import Bars  # noqa: E402
from pipeline.recipe import load_recipe  # noqa: E402
from pipeline.runner import RunResult, run_recipe  # noqa: E402
from pipeline.store import PackedStore  # noqa: E402

RECIPE = REPO / "recipes/pmnist100-supsup.yaml"
# wsn and tsn rows: task given, with the shared head sized to the classes (no superfluous outputs)
TASK_GIVEN = ["evaluation.scenario=task_given", "evaluation.objective=entropy",
              "model.head_outputs=null"]
OVERRIDES = {
    "supsup": [],
    "wsn": ["method={kind: wsn, density: 0.3}", "train.optimizer=adam", "train.lr=0.001",
            *TASK_GIVEN],
    "tsn": ["method={kind: tsn, density: 0.3, policy: split}", "train.optimizer=adam",
            "train.lr=0.001", *TASK_GIVEN],
}


def run(method: str, tasks: int, resume: bool, extra: list[str]) -> RunResult:
    recipe = load_recipe(RECIPE, [*OVERRIDES[method], f"benchmark.tasks={tasks}",
                                  f"name=pmnist{tasks}-{method}", *extra])
    with Bars() as bars:
        return run_recipe(recipe, None, bars, fresh=not resume)


def task_given_acc(r: RunResult) -> float:
    """ACC with the task id given, re-measured from ``r``'s store by the export path (each
    task's committed subnetwork rebuilt from the file)."""
    assert r.store_path is not None
    recipe, _, modules = store_task_modules(r.store_path)
    stream = build_stream(recipe.benchmark)
    bs = recipe.train.eval_batch_size
    accs = []
    with torch.inference_mode():
        for t, module in modules.items():
            test = stream.load(t).test
            logits = torch.cat([module(test.x[i:i + bs]) for i in range(0, len(test), bs)])
            accs.append(_acc_loss(logits, test.y)[0])
    return statistics.mean(accs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--methods", nargs="+", default=list(OVERRIDES), choices=list(OVERRIDES))
    ap.add_argument("--resume", action="store_true",
                    help="continue (or only print) runs already in their run folders")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="recipe override for every row (e.g. benchmark.train_limit=2000)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    print(f"# {torch.get_num_threads()} torch thread, torch {torch.__version__}; "
          f"{args.tasks} tasks; recipe {RECIPE.relative_to(REPO)}")
    head = ["method", "scenario", "ACC (%)", "task inference (%)", "ACC task given (%)", "BWT",
            "store (B)", "base (B)", "per task: masks", "codes", "tensors (head)", "meta",
            "wall (min)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in args.methods:
        r = run(method, args.tasks, args.resume, args.overrides)
        store = PackedStore.open(r.store_path) if r.store_path else None
        assert store is not None
        rep = store.report()
        per = {c: statistics.mean(t.bytes.get(c, 0) for t in rep.tasks)
               for c in ("masks", "codes", "codebooks", "tensors", "metadata")}
        inferred = r.recipe.evaluation.scenario == "task_inferred"
        given = task_given_acc(r) if inferred else r.acc
        lines.append("| " + " | ".join([
            method, r.recipe.evaluation.scenario, f"{r.acc:.2f}",
            f"{r.matrix.task_inference_acc():.2f}" if inferred else "-", f"{given:.2f}",
            f"{r.bwt:+.3f}", f"{rep.file_size:,}", f"{rep.bytes.get('base', 0):,}",
            f"{per['masks']:,.0f}", f"{per['codes'] + per['codebooks']:,.0f}",
            f"{per['tensors']:,.0f}", f"{per['metadata']:,.0f}", f"{r.elapsed() / 60:.1f}",
        ]) + " |")
        print(f"{method}: run folder {r.run_dir}", flush=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
