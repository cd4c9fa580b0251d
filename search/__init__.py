"""Per-task Optuna search of sparsity, block pattern and bit-width per layer, scored by
validation accuracy, latency measured on the compiled model, and bytes added to the store.

``make_search_compressor`` returns the compress stage the runner calls for each task when
``search.enabled``; it uses the pipeline's own compression passes (no second implementation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from search._objective import Latency, LatencyFn, TaskProblem, TrialResult
from search._select import Point, pareto_front, select
from search._space import LayerSpace, previous_plan, resolve_space, suggest_plans
from search._worker import publish_task, retract_task, run_worker
from search.objectives import Objective, ScoreContext, register_objective

if TYPE_CHECKING:
    from pipeline.runner import CompressFn

__all__ = [
    "Latency",
    "LatencyFn",
    "LayerSpace",
    "Objective",
    "Point",
    "ScoreContext",
    "TaskProblem",
    "TrialResult",
    "make_search_compressor",
    "run_worker",
    "pareto_front",
    "register_objective",
    "resolve_space",
    "select",
    "suggest_plans",
]


def make_search_compressor(recipe, latency_fn: LatencyFn | None = None,
                           worker: bool = False) -> CompressFn:
    """The runner's compress stage, searching each task's plan with Optuna.

    Latency defaults to the model compiled for the recipe's search target (``search.target``,
    else the first target), measured by ``compilers.measure`` and cached by structure.
    """
    from pipeline.compress import CompressContext, summarize
    from pipeline.errors import RecipeError
    from pipeline.methods import TSN
    from pipeline.stages import load_task_tensors, task_tensors, trained_layers
    from pipeline.targets import find_target
    from search._driver import search_task
    from search._latency import compiled_latency, realizability_labels

    target_cfg = find_target(recipe, recipe.search.target)
    cache_dir = recipe.output_dir.parent / "tvm-cache"
    latency_fn = latency_fn or compiled_latency(target_cfg, cache_dir)

    def compress(s, task, masks, bars, run):
        method, recipe, t = s.method, s.recipe, task.index
        if not isinstance(method, TSN):
            raise RecipeError("search.enabled needs method.kind: tsn (the search drives TSN's "
                              f"compression passes), got {recipe.method.kind!r}")
        cfg = recipe.search
        trained = trained_layers(s.model, masks)
        ctx = CompressContext(s.model, t, task_tensors(s.model, t), task,
                              recipe.train.eval_batch_size)
        reference = ctx.accuracy(trained)
        space = resolve_space(cfg.space, list(trained))
        narrow = sorted({b for sp in space.values() for b in sp.bits if b < 32})
        split_layers = {n for n, r in trained.items() if (r.own & method.consolidated[n]).any()}
        problem = TaskProblem(
            ctx, trained, s.store, split_layers, reference,
            example=task.val.x[: cfg.latency_batch].contiguous(), latency_fn=latency_fn,
            finetune_epochs=cfg.finetune_epochs, lr=recipe.train.lr / 10,
            batch_size=recipe.train.batch_size, seed=recipe.train.seed + t,
            quant_fallback=tuple(narrow) or (8,),
            labels_fn=realizability_labels(target_cfg, s.model.layer_shapes()))
        folder = s.run_dir / "search"
        # workers (taskpack search --worker) start from the published task
        outcome = search_task(problem, cfg, space, run, folder / f"task-{t}.journal",
                              f"{recipe.name}-task-{t}", folder / f"task-{t}", bars, worker,
                              warm=previous_plan(folder, t, space) if cfg.warm_start else None,
                              on_ready=None if worker else lambda: publish_task(s, t, masks, run))
        if worker:
            return {}, outcome.stats
        retract_task(s, t)
        layers, tensors, acc = problem.apply(outcome.plans)
        load_task_tensors(s.model, tensors)
        method.finalize(t, {n: r.mask for n, r in layers.items()})
        stats = {"acc_val_trained": reference, "acc_val_quantized": acc, **outcome.stats,
                 **summarize(layers)}
        return layers, stats

    return compress
