"""The search as a ``Compressor``: per task, an Optuna study picks the plan that is committed."""

from __future__ import annotations

import logging

from pipeline.compress import (
    CompressContext,
    Compressed,
    Compressor,
    layers_on_held_positions,
    load_task_tensors,
    summarize,
    task_tensors,
    trained_layers,
)
from pipeline.errors import RecipeError
from pipeline.recipe import Recipe, TargetConfig
from pipeline.session import Session, TaskContext
from pipeline.subnet import is_chain
from pipeline.targets import find_target
from search._objective import LatencyFn, TaskProblem
from search._publish import publish_task, retract_task
from search._space import LayerSpace, previous_plan, resolve_space
from search.objectives import resolve

__all__ = ["SearchCompressor"]

log = logging.getLogger(__name__)


def describe_target(cfg: TargetConfig) -> str:
    """``host (tvm, tuned 8 trials/workload)``: where the search measures latency."""
    tuning = (f", tuned {cfg.tune_trials} trials/workload" if cfg.tune_trials
              else ", untuned" if cfg.backend == "tvm" else "")
    return f"{cfg.name} ({cfg.backend}{tuning})"


class SearchCompressor(Compressor):
    """Searches each task's plan with Optuna, using the pipeline's own compression passes.

    Latency defaults to the model compiled for the recipe's search target (``search.target``,
    else the first target), measured by ``compilers.measure`` and cached by structure. With
    ``worker=True`` it only adds trials to a running study (``taskpack search --worker``) and
    returns no layers: the run that owns the task selects and commits.
    """

    name = "search"

    def __init__(self, recipe: Recipe, latency_fn: LatencyFn | None = None,
                 worker: bool = False) -> None:
        from search._latency import compiled_latency, realizability_labels
        from search._storage import check_storage

        self.check(recipe)
        check_storage(recipe.search)  # a missing driver or a dead server: before any training
        self.recipe = recipe
        self.worker = worker
        self.target_cfg = find_target(recipe, recipe.search.target)
        cache_dir = recipe.tuning_dir
        self.latency_fn = latency_fn or compiled_latency(self.target_cfg, cache_dir)
        self._labels = realizability_labels

    @staticmethod
    def check(recipe: Recipe) -> None:
        """What the schema cannot check (it does not know the search): the objectives the recipe
        names are registered, the search target exists. Raises ``RecipeError``."""
        try:
            resolve(recipe.search.objectives)
        except ValueError as e:
            raise RecipeError(f"search.objectives: {e}") from None
        find_target(recipe, recipe.search.target)

    def forget_studies(self) -> list[str]:
        """Delete the recipe's studies from ``search.storage`` (``taskpack run --fresh``; a
        journal lives in the run folder, which ``--fresh`` deletes). Returns their names."""
        from search._storage import delete_studies
        from search._study import studies_of

        return delete_studies(self.recipe.search, studies_of(self.recipe))

    def resume_trained(self, session: Session, task: int) -> bool:
        """A run interrupted while it searched ``task`` left the task's trained state
        (``search/task-K-trained.npz``); load it instead of training the task again. The
        search then continues its study where it stopped."""
        from search._publish import load_published, published_paths
        from search._study import finished_trials, study_name

        if self.worker:
            return False
        path, meta = published_paths(session.run_dir, task)
        if not (path.is_file() and meta.is_file()):
            return False
        if not session.method.end_task_repeatable:
            log.info("task %d: %s changes the weights when the task ends, so the trained "
                     "checkpoint %s cannot be reused; training the task again", task,
                     self.recipe.method.kind, path)
            return False
        try:
            weights = load_published(path)[0]
            session.model.load_state_dict(weights)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            log.warning("task %d: %s cannot be reused (%s); training the task again", task,
                        path, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return False
        cfg = self.recipe.search
        done = finished_trials(cfg, path.parent / f"task-{task}.journal",
                               study_name(self.recipe, task))
        at = (f"after trial {done - 1} ({done} of {cfg.trials} trials done)" if done
              else "before its first trial")
        log.info("resuming task %d %s, reusing the trained checkpoint %s (not training it "
                 "again)", task, at, path)
        return True

    def task_space(self, s: Session) -> dict[str, LayerSpace]:
        """The plan space of every masked layer; a method whose tasks hold no own values
        (masks only) has no bits to choose."""
        return resolve_space(self.recipe.search.space, list(s.model.masked_layers()),
                             bits=None if self.recipe.method.stores_own_values else (32,))

    def task_problem(self, s: Session, ctx: TaskContext,
                     space: dict[str, LayerSpace]) -> TaskProblem:
        """Everything a trial of task ``ctx.index`` needs, built once per task."""
        recipe, t, cfg = s.recipe, ctx.index, s.recipe.search
        trained = trained_layers(s.method, t, ctx.masks)
        cctx = CompressContext(s.model, t, task_tensors(s.model, t), ctx.task,
                               recipe.train.eval_batch_size)
        narrow = sorted({b for sp in space.values() for b in sp.bits if b < 32})
        return TaskProblem(
            cctx, trained, s.store, layers_on_held_positions(trained, s.store.union_mask()),
            cctx.accuracy(trained),
            example=ctx.task.val.x[: cfg.latency_batch].cpu().contiguous(),
            latency_fn=self.latency_fn, finetune_epochs=cfg.finetune_epochs,
            lr=cfg.finetune_lr or recipe.train.lr / 10, batch_size=recipe.train.batch_size,
            seed=recipe.train.seed + t, quant_fallback=tuple(narrow) or (8,),
            labels_fn=self._labels(self.target_cfg, s.model.layer_shapes(),
                                   chain=is_chain(s.model)),
            target=describe_target(self.target_cfg),
            run_tags={"taskpack.task": str(t), "taskpack.task_name": ctx.task.name,
                      "taskpack.target": self.target_cfg.name,
                      "taskpack.method": recipe.method.kind})

    def compress(self, session: Session, ctx: TaskContext) -> Compressed:
        from search._driver import search_task
        from search._study import study_name

        s, recipe, t = session, session.recipe, ctx.index
        if s.method.compression() is None:
            raise RecipeError(f"search.enabled: method {recipe.method.kind!r} commits its "
                              "tasks as trained (its compression() is None), so there is no "
                              "plan to search")
        cfg = recipe.search
        space = self.task_space(s)
        problem = self.task_problem(s, ctx, space)
        reference = problem.reference_accuracy
        folder = s.run_dir / "search"
        # workers (taskpack search --worker) start from the published task
        outcome = search_task(problem, cfg, space, ctx.run, folder / f"task-{t}.journal",
                              study_name(recipe, t), folder / f"task-{t}", ctx.bars,
                              self.worker,
                              warm=previous_plan(folder, t, space) if cfg.warm_start else None,
                              on_ready=None if self.worker
                              else lambda: publish_task(s, t, ctx.masks, ctx.run))
        if self.worker:
            return Compressed({}, outcome.stats)
        retract_task(s, t)
        layers, tensors, acc = problem.apply(outcome.plans)
        load_task_tensors(s.model, tensors)
        stats = {"acc_val_trained": reference, "acc_val_quantized": acc, **outcome.stats,
                 **summarize(layers)}
        meta: dict[str, str | float] = {f"pattern/{n}": str(p.pattern)
                                        for n, p in outcome.plans.items()}
        latency = outcome.stats.get("search_chosen_latency_ms")
        if latency is not None and latency == latency:  # not NaN
            meta |= {"latency_ms": float(latency), "latency_target": self.target_cfg.name}
        return Compressed(layers, stats, meta)
