"""TSN compression of one task after training (docs/methods.md, TSN steps 3-4).

1. Fine-tuned pruning: round-robin over the layers whose plan asks for sparsity; each step removes
   ``step_fraction`` of the layer's own weights (by the plan's pattern) and is accepted only if
   validation accuracy through the task's own candidate mask stays within ``delta`` of the
   accuracy before pruning (against that fixed a_0, so drops cannot accumulate). Mask and own set
   shrink together, so a pruned position is neither used nor held. Then, optionally, the surviving
   own weights are retrained a little with pruned positions held at zero.
2. Adaptive quantization, own weights only: layers with the most own weights first; per layer the
   smallest bit-width whose 1-D k-means codebook keeps accuracy within ``delta_q`` of the pruned
   accuracy, with earlier layers' choices in force; a layer where none passes stays fp32.

Shared weights (earlier tasks') are never written: every candidate is evaluated with the stored
values at shared positions.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from pipeline.compress._patterns import Pattern, prune_step
from pipeline.data import Split, Task
from pipeline.evaluation import evaluate_snapshot
from pipeline.models import ContinualNet, masked_weight
from pipeline.progress import QUIET, Bars
from pipeline.recipe import LayerPlan
from pipeline.store import fit_codebook

log = logging.getLogger(__name__)


@dataclass
class LayerResult:
    """One layer of a task between training and commit.

    ``prunable``: the positions of ``mask`` pruning may remove (None: ``own``); ``rank`` orders
    them, lowest first (None: ``|values|``); ``prunable_before``: how many were prunable right
    after training, which a plan's sparsity is a fraction of.
    """

    mask: torch.Tensor
    own: torch.Tensor
    values: torch.Tensor  # dense layer tensor; own positions hold the (quantized) own values
    bits: int = 32
    codebook: torch.Tensor | None = None
    prunable_before: int = 0
    prunable: torch.Tensor | None = None
    rank: torch.Tensor | None = None

    def removable(self) -> torch.Tensor:
        """The positions pruning may still remove."""
        return self.own if self.prunable is None else self.prunable

    def pruned_fraction(self) -> float:
        return 1 - int(self.removable().sum()) / max(self.prunable_before, 1)

    def clone(self) -> LayerResult:
        def c(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.clone()

        return replace(self, mask=self.mask.clone(), own=self.own.clone(),
                       values=self.values.clone(), codebook=c(self.codebook),
                       prunable=c(self.prunable), rank=c(self.rank))

    def keep(self, mask: torch.Tensor) -> LayerResult:
        """This layer with its mask cut down to ``mask`` (own and prunable shrink with it)."""
        return replace(self, mask=mask, own=self.own & mask,
                       prunable=None if self.prunable is None else self.prunable & mask)


def layer_snapshot(layers: dict[str, LayerResult],
                   tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The task as candidate ``layers`` make it, keyed like the model's state dict."""
    snap = {f"{n}.weight": torch.where(r.mask, r.values, torch.zeros((), dtype=r.values.dtype))
            for n, r in layers.items()}
    snap.update(tensors)
    return snap


@dataclass
class CompressContext:
    """What compression needs to evaluate candidates of task ``task``."""

    model: ContinualNet
    task: int
    task_tensors: dict[str, torch.Tensor]  # head, per-task norms
    data: Task
    eval_batch_size: int
    evaluations: int = 0

    def accuracy(self, layers: dict[str, LayerResult], split: Split | None = None) -> float:
        self.evaluations += 1
        return evaluate_snapshot(self.model, layer_snapshot(layers, self.task_tensors),
                                 self.task, split or self.data.val, self.eval_batch_size)[0]


def prune(ctx: CompressContext, layers: dict[str, LayerResult], plans: dict[str, LayerPlan],
          delta: float, steps: int, step_fraction: float, bars: Bars = QUIET,
          gated: bool = True) -> float:
    """Fine-tuned pruning in place; returns the accuracy after it.

    ``gated=False`` applies every step without evaluating it (the search scores the whole plan
    once instead).
    """
    a0 = ctx.accuracy(layers) if gated else math.inf
    active = [n for n, p in plans.items()
              if p.sparsity > 0 and int(layers[n].removable().sum()) > 0]
    i = 0
    with bars.bar(f"task {ctx.task} pruning", steps) as bar:
        for _ in range(steps):
            if not active:
                break
            name = active[i % len(active)]
            r, plan = layers[name], plans[name]
            pattern = Pattern.parse(plan.pattern)
            removed = r.pruned_fraction()
            # remaining prunable fraction to remove to reach the plan's sparsity, capped per step
            want = (plan.sparsity - removed) / max(1 - removed, 1e-12)
            frac = min(step_fraction, want)
            cand = prune_step(r.values if r.rank is None else r.rank, r.mask, r.removable(),
                              pattern, frac)
            trial = {**layers, name: r.keep(cand)}
            acc = ctx.accuracy(trial) if gated else math.nan
            accepted = not gated or a0 - acc <= delta
            if accepted:
                r = layers[name] = trial[name]
            done = r.pruned_fraction() >= plan.sparsity - 1e-9
            if not accepted or done or pattern.kind == "nm":
                active.remove(name)
            else:
                i += 1
            log.debug("prune %s by %.3f: acc %.2f (a0 %.2f) %s", name, frac, acc, a0,
                      "accepted" if accepted else "rejected")
            bars.advance(bar, info=f"{name} acc {acc:.2f}")
    return ctx.accuracy(layers)


def finetune_own(ctx: CompressContext, layers: dict[str, LayerResult], epochs: float, lr: float,
                 batch_size: int, seed: int) -> None:
    """Retrain own values with masks fixed; shared and pruned positions do not move.

    ``epochs`` may be fractional: training stops after ``ceil(epochs * batches per epoch)``
    batches of the shuffled order (a search trial fine-tunes a quarter epoch, say). The masked
    weight and the own-positions gate are one fused node (``masked_weight``), Adam is fused.
    """
    if epochs <= 0:
        return
    names = list(layers)
    params = {n: layers[n].values.clone().requires_grad_(True) for n in names}
    frozen = {n: ~layers[n].own for n in names}  # only own positions learn
    # the task's parameters (head, BN affine) learn; its buffers (BN running stats) do not
    trainable = dict(ctx.model.named_parameters())
    head = {k: v.clone().requires_grad_(k in trainable) for k, v in ctx.task_tensors.items()}
    opt = torch.optim.Adam([*params.values(), *(v for v in head.values() if v.requires_grad)],
                           lr=lr, fused=True)
    gen = torch.Generator().manual_seed(seed)
    model, train = ctx.model, ctx.data.train
    steps = max(1, math.ceil(epochs * math.ceil(len(train) / batch_size)))
    model.train()
    model.set_mode("dense")
    while steps > 0:
        order = torch.randperm(len(train), generator=gen).to(train.x.device)
        for i in range(0, min(len(order), steps * batch_size), batch_size):
            idx = order[i:i + batch_size]
            state = {f"{n}.weight": masked_weight(params[n], None, None, layers[n].mask, frozen[n])
                     for n in names} | head
            out = torch.func.functional_call(model, state, (train.x[idx],), {"task": ctx.task},
                                             strict=False)
            loss = F.cross_entropy(out, train.y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        steps -= math.ceil(len(order) / batch_size)
    with torch.no_grad():
        for n in names:
            layers[n].values = torch.where(layers[n].own, params[n].detach(), layers[n].values)
        for k, v in head.items():
            ctx.task_tensors[k] = v.detach()


def quantize(ctx: CompressContext, layers: dict[str, LayerResult], plans: dict[str, LayerPlan],
             candidates: list[int], delta: float, adaptive: bool,
             required: set[str] | None = None, bars: Bars = QUIET) -> float:
    """Adaptive quantization of own weights in place; returns the accuracy after it.

    Layers in ``required`` may not stay fp32 (their own codes share positions with earlier
    tasks' codes, so they must fit the free bits): if no width passes, the widest candidate is
    used and the drop it costs is what the accuracy after this stage reports.

    Candidates are evaluated only when accuracy decides (``adaptive`` with a finite
    ``delta``); otherwise each layer takes its first width and the one evaluation is the
    returned accuracy (a search trial: 1 pass over the validation split instead of 2 + layers).
    """
    decides = adaptive and math.isfinite(delta)
    a_p = ctx.accuracy(layers) if decides else math.nan
    order = sorted(layers, key=lambda n: -int(layers[n].own.sum()))
    with bars.bar(f"task {ctx.task} quantizing", len(order)) as bar:
        for name in order:
            r, plan = layers[name], plans[name]
            must = name in (required or set())
            bits_list = [b for b in candidates if b <= plan.bits] if adaptive else (
                [plan.bits] if plan.bits < 32 else [])
            if must and not bits_list:
                bits_list = [max(candidates)]
            if int(r.own.sum()) == 0:
                bars.advance(bar)
                continue
            original = r.values
            own_vals = original[r.own]
            for b in bits_list:
                codebook, codes = fit_codebook(own_vals, b)  # on the host
                codebook, codes = codebook.to(original.device), codes.to(original.device)
                values = original.clone()
                values[r.own] = codebook[codes]
                if (not decides or (must and b == bits_list[-1])
                        or a_p - ctx.accuracy({**layers, name: LayerResult(r.mask, r.own,
                                                                           values)}) <= delta):
                    r.values, r.bits, r.codebook = values, b, codebook
                    break
            bars.advance(bar, info=f"{name}: {r.bits} bits")
    return ctx.accuracy(layers)


def summarize(layers: dict[str, LayerResult]) -> dict[str, float]:
    stats: dict[str, float] = {}
    for n, r in layers.items():
        # the fraction of the prunable positions (own, or a mask-only task's mask) removed
        stats[f"{n}.pruned"] = r.pruned_fraction() if r.prunable_before else math.nan
        stats[f"{n}.bits"] = r.bits
        stats[f"{n}.density"] = float(r.mask.float().mean())
    return stats
