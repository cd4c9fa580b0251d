"""The recipe's plan, applied with TSN's passes: the default ``Compressor``."""

from __future__ import annotations

from pipeline.compress._base import Compressed, Compressor
from pipeline.compress._task import (
    layers_on_held_positions,
    load_task_tensors,
    task_tensors,
    trained_layers,
)
from pipeline.compress._tsn import CompressContext, finetune_own, prune, quantize, summarize
from pipeline.recipe import plan_for_layers
from pipeline.session import Session, TaskContext

__all__ = ["PlanCompressor"]


class PlanCompressor(Compressor):
    """Prune, fine-tune and quantize the task's own weights as ``compression`` plans them,
    with the method's pass settings; a method without passes commits as trained (fp32)."""

    name = "plan"

    def compress(self, session: Session, ctx: TaskContext) -> Compressed:
        layers = trained_layers(session.method, ctx.index, ctx.masks)
        passes = session.method.compression()
        if passes is None:
            return Compressed(layers)
        recipe, t = session.recipe, ctx.index
        prune_cfg, quant_cfg = passes.prune, passes.quantize
        plans = plan_for_layers(recipe.compression, list(layers))
        cctx = CompressContext(session.model, t, task_tensors(session.model, t), ctx.task,
                               recipe.train.eval_batch_size)
        acc_trained = cctx.accuracy(layers)
        acc_pruned = prune(cctx, layers, plans, prune_cfg.delta, prune_cfg.steps,
                           prune_cfg.step_fraction, ctx.bars)
        if prune_cfg.finetune_epochs and any(p.sparsity > 0 for p in plans.values()):
            finetune_own(cctx, layers, prune_cfg.finetune_epochs, recipe.train.lr / 10,
                         recipe.train.batch_size, recipe.train.seed + t)
            acc_pruned = cctx.accuracy(layers)
        required = layers_on_held_positions(layers, session.store.union_mask())
        acc_q = quantize(cctx, layers, plans, quant_cfg.bits, quant_cfg.delta,
                         quant_cfg.adaptive, required=required, bars=ctx.bars)
        load_task_tensors(session.model, cctx.task_tensors)  # the head fine-tuning made
        stats = {"acc_val_trained": acc_trained, "acc_val_pruned": acc_pruned,
                 "acc_val_quantized": acc_q, "compress_evaluations": cctx.evaluations,
                 **summarize(layers)}
        patterns = {f"pattern/{n}": str(p.pattern) for n, p in plans.items()}
        return Compressed(layers, stats, dict(patterns))
