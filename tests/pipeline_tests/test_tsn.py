"""TSN compression invariants on tiny models (docs/methods.md)."""

from __future__ import annotations

import math

import torch

from pipeline.compress import (
    CompressContext,
    LayerResult,
    finetune_own,
    prune,
    quantize,
    task_tensors,
)
from pipeline.methods import TSN
from pipeline.recipe import LayerPlan, TrainConfig, recipe_from_dict
from pipeline.train import train_task
from tests.pipeline_tests._tiny import tiny_mlp, tiny_task

CFG = TrainConfig(lr=0.01, epochs=3, batch_size=16, eval_batch_size=32)


def _trained(policy: str = "split", norm: str = "none"):
    model = tiny_mlp(hidden=(32, 32), norm=norm)
    method_cfg = recipe_from_dict({"name": "t", "method": {"kind": "tsn", "density": 0.5,
                                                           "policy": policy}}).method
    method = TSN(model, method_cfg)
    task = tiny_task(0, n=192)
    model.add_task(task.num_classes)
    train_task(method, 0, task, CFG)
    masks = method.end_task(0)
    layers = {n: LayerResult(masks.mask[n].clone(), masks.own[n].clone(),
                             m.weight.detach().clone(), prunable_before=int(masks.own[n].sum()))
              for n, m in model.masked_layers().items()}
    ctx = CompressContext(model, 0, task_tensors(model, 0), task, 32)
    return model, method, layers, ctx


def test_pruning_shrinks_mask_and_own_together_within_delta() -> None:
    _, _, layers, ctx = _trained()
    before = {n: (r.mask.clone(), r.own.clone()) for n, r in layers.items()}
    a0 = ctx.accuracy(layers)
    plans = {n: LayerPlan(sparsity=0.5) for n in layers}
    acc = prune(ctx, layers, plans, delta=5.0, steps=6, step_fraction=0.25)
    assert a0 - acc <= 5.0
    for n, r in layers.items():
        mask0, own0 = before[n]
        assert not (r.mask & ~mask0).any()  # nothing added
        assert torch.equal(r.own, own0 & r.mask)  # pruned positions leave own and mask
        assert 1 - r.own.sum() / own0.sum() <= 0.5 + 1e-6
    assert any(int(r.own.sum()) < int(before[n][1].sum()) for n, r in layers.items())


def test_finetuning_trains_own_weights_and_norm_affine_but_not_running_stats() -> None:
    # per-task BN: its running stats are task tensors but not parameters (a regression: they
    # were made to require grad, which batch norm refuses)
    model, _, layers, ctx = _trained(norm="per_task")
    before = {n: r.values.clone() for n, r in layers.items()}
    finetune_own(ctx, layers, epochs=1, lr=0.01, batch_size=16, seed=0)
    params = dict(model.named_parameters())
    assert any(k in params for k in ctx.task_tensors) and any(
        k.endswith("running_mean") for k in ctx.task_tensors)
    assert not any(v.requires_grad for v in ctx.task_tensors.values())
    for n, r in layers.items():
        assert torch.equal(r.values[~r.own], before[n][~r.own])  # only own positions move
    assert any(not torch.equal(r.values, before[n]) for n, r in layers.items())


def test_fractional_finetuning_trains_that_share_of_an_epochs_batches() -> None:
    model, _, layers, ctx = _trained()  # 192 training examples: 12 batches of 16 an epoch
    batches: list[int] = []
    hook = model.register_forward_pre_hook(lambda *_: batches.append(1))
    for epochs, want in [(0.25, 3), (0.01, 1), (1.5, 18), (2, 24)]:
        batches.clear()
        finetune_own(ctx, layers, epochs=epochs, lr=0.01, batch_size=16, seed=0)
        assert len(batches) == want, epochs
    hook.remove()


def test_quantization_evaluates_candidates_only_when_accuracy_decides() -> None:
    _, _, layers, ctx = _trained()
    fixed = {n: r.clone() for n, r in layers.items()}
    plans = {n: LayerPlan(bits=4) for n in layers}
    before = ctx.evaluations
    acc = quantize(ctx, fixed, plans, [8], delta=math.inf, adaptive=False)
    assert ctx.evaluations - before == 1  # the returned accuracy only
    assert acc == ctx.accuracy(fixed) and all(r.bits == 4 for r in fixed.values())
    before = ctx.evaluations
    quantize(ctx, layers, plans, [2, 3, 4], delta=0.0, adaptive=True)
    assert ctx.evaluations - before >= 2 + len(layers)  # a_p, a candidate per layer, the result


def test_pruning_with_zero_tolerance_rejects_harmful_steps() -> None:
    _, _, layers, ctx = _trained()
    a0 = ctx.accuracy(layers)
    acc = prune(ctx, layers, {n: LayerPlan(sparsity=0.9) for n in layers}, delta=0.0,
                steps=10, step_fraction=0.9)
    assert acc >= a0


def test_quantization_touches_own_positions_only_and_uses_codebook_values() -> None:
    _, _, layers, ctx = _trained()
    original = {n: r.values.clone() for n, r in layers.items()}
    quantize(ctx, layers, {n: LayerPlan(bits=8) for n in layers}, [2, 3, 4], delta=100.0,
             adaptive=True)
    for n, r in layers.items():
        assert r.bits == 2  # delta 100: the smallest width passes
        assert torch.equal(r.values[~r.own], original[n][~r.own])
        own_vals = r.values[r.own]
        assert torch.isin(own_vals, r.codebook).all()
        assert r.codebook.numel() <= 4


def test_quantization_keeps_fp32_when_nothing_passes_unless_required() -> None:
    _, _, layers, ctx = _trained()
    names = list(layers)
    # delta -100: no width can pass
    quantize(ctx, layers, {n: LayerPlan(bits=8) for n in layers}, [1], delta=-100.0,
             adaptive=True, required={names[0]})
    assert layers[names[0]].bits == 1  # required: the widest candidate is used anyway
    assert layers[names[1]].bits == 32 and layers[names[1]].codebook is None


def test_split_policy_makes_held_positions_trainable_only_with_free_bits() -> None:
    model, method, layers, _ = _trained("split")
    held = {n: r.own for n, r in layers.items()}
    values = {n: r.values for n, r in layers.items()}
    used = {n: torch.where(r.own, 8, 0).int() for n, r in layers.items()}
    method.load_store_state(held, values, used)
    for n in layers:  # 32 - 8 = 24 free bits >= 8: every held position is splittable
        assert torch.equal(method.splittable[n], held[n])
        assert not method.frozen[n].any()
    used = {n: torch.where(r.own, 30, 0).int() for n, r in layers.items()}
    method.load_store_state(held, values, used)
    for n in layers:  # 2 free bits < 8: frozen
        assert not method.splittable[n].any()
        assert torch.equal(method.frozen[n], held[n])


def test_reuse_only_freezes_every_held_position() -> None:
    _, method, layers, _ = _trained("reuse_only")
    held = {n: r.own for n, r in layers.items()}
    method.load_store_state(held, {n: r.values for n, r in layers.items()},
                            {n: torch.where(r.own, 8, 0).int() for n, r in layers.items()})
    for n in layers:
        assert torch.equal(method.frozen[n], held[n])
