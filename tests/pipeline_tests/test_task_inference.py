"""Task inference (docs/task-inference.md): the gradient formula against autograd, One-Shot and
Binary on tasks that are easy to tell apart, per-task BN, shared heads."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from pipeline.data import Split
from pipeline.errors import InputError
from pipeline.evaluation import snapshot_logits
from pipeline.models import build_model
from pipeline.recipe import ModelConfig
from pipeline.task_inference import (
    build_superposition,
    entropy,
    entropy_grads,
    evaluate_inferred,
    infer_tasks,
    objective,
    superfluous_lse,
)
from tests.pipeline_tests._tiny import tiny_mlp


def _random_tasks(model, n: int, classes: int = 3, seed: int = 0) -> dict:
    """``n`` committed-looking snapshots: random masked weights, heads and BN statistics."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        model.add_task(classes)
    snaps = {}
    for t in range(n):
        snap = {}
        for name, layer in model.masked_layers().items():
            w = torch.randn(layer.weight.shape, generator=g)
            snap[f"{name}.weight"] = w * (torch.rand(w.shape, generator=g) < 0.5)
        state = dict(model.named_parameters()) | dict(model.named_buffers())
        for k in model.task_param_names(t):
            v = state[k]
            if not v.is_floating_point():
                snap[k] = v.detach().clone()
            elif k.endswith("running_var"):
                snap[k] = torch.rand(v.shape, generator=g) + 0.5
            else:
                snap[k] = torch.randn(v.shape, generator=g)
        snaps[t] = snap
    return snaps


def _autograd_alpha(model, sup, alpha: torch.Tensor, x: torch.Tensor,
                    fn=entropy) -> torch.Tensor:
    """dH/dalpha by autograd through theta(alpha) = sum alpha_i theta_i (the reference); BN
    running statistics are mixed too but held constant (BN gives them no gradient)."""
    a = alpha.clone().requires_grad_(True)
    full = sup._split(a @ sup.theta)  # every task in the graph, those with alpha_i = 0 too
    mixed = {k: v.detach() if k.endswith(("running_mean", "running_var")) else v
             for k, v in full.items()}
    logits = functional_call(model, {**mixed, **sup.fixed}, (x,), {"task": 0}, strict=False)
    fn(logits[:1]).sum().backward()
    assert a.grad is not None
    return a.grad


@pytest.mark.parametrize("norm", ["none", "per_task"])
@pytest.mark.parametrize("head", ["per_task", "shared"])
def test_entropy_gradient_matches_autograd_through_alpha(norm: str, head: str) -> None:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="mlp", hidden=[6, 5], norm=norm, head=head),
                        (1, 1, 4), num_classes=3)
    sup = build_superposition(model, _random_tasks(model, 4))
    model.eval()
    model.set_mode("dense")
    x = torch.randn(5, 1, 1, 4, generator=torch.Generator().manual_seed(1))
    alpha = torch.tensor([0.1, 0.2, 0.3, 0.4])
    batch = entropy_grads(model, sup, alpha, x, "batch")
    assert batch.shape == (1, 4)
    torch.testing.assert_close(batch[0], _autograd_alpha(model, sup, alpha, x[:1]))
    per_sample = entropy_grads(model, sup, alpha, x, "sample")
    assert per_sample.shape == (5, 4)
    for b in range(5):
        torch.testing.assert_close(per_sample[b], _autograd_alpha(model, sup, alpha, x[b:b + 1]))
    among = torch.tensor([True, False, True, False])
    some = entropy_grads(model, sup, alpha, x, "sample", among=among)
    torch.testing.assert_close(some[:, among], per_sample[:, among])
    assert torch.isinf(some[:, ~among]).all()
    # tasks with alpha_i = 0 are left out of the mixture but still get their gradient
    half = torch.tensor([0.5, 0.0, 0.5, 0.0])
    torch.testing.assert_close(entropy_grads(model, sup, half, x, "batch")[0],
                               _autograd_alpha(model, sup, half, x[:1]))


@pytest.mark.parametrize("norm", ["none", "per_task"])
def test_gradients_with_a_mixture_per_input_match_one_input_at_a_time(norm: str) -> None:
    from pipeline.task_inference import _grads_per_input

    model = tiny_mlp(hidden=(6, 5), dim=4, norm=norm)
    sup = build_superposition(model, _random_tasks(model, 4, seed=5))
    model.eval()
    model.set_mode("dense")
    x = torch.randn(6, 1, 1, 4, generator=torch.Generator().manual_seed(6))
    alphas = torch.rand(6, 4, generator=torch.Generator().manual_seed(7))
    alphas[1, 2] = 0.0
    alphas = alphas / alphas.sum(1, keepdim=True)
    got = _grads_per_input(model, sup, alphas, x)
    for b in range(6):
        torch.testing.assert_close(got[b], _autograd_alpha(model, sup, alphas[b], x[b:b + 1]))


def test_entropy_gradient_with_batch_statistics_uses_the_whole_batch() -> None:
    model = tiny_mlp(hidden=(6,), dim=4, norm="stateless")
    sup = build_superposition(model, _random_tasks(model, 3))
    model.eval()
    model.set_mode("dense")
    x = torch.randn(8, 1, 1, 4, generator=torch.Generator().manual_seed(2))
    alpha = torch.full((3,), 1 / 3)
    got = entropy_grads(model, sup, alpha, x, "batch", batch_stats=True)
    torch.testing.assert_close(got[0], _autograd_alpha(model, sup, alpha, x))


def test_superposition_refuses_tasks_of_different_class_counts() -> None:
    model = tiny_mlp(hidden=(6,), dim=4)
    model.add_task(3)
    model.add_task(5)
    snaps = {t: {**{f"{n}.weight": m.weight.detach() for n, m in model.masked_layers().items()},
                 **{k: v.detach() for k, v in model.heads[t].state_dict(prefix=f"heads.{t}.")
                    .items()}}
             for t in range(2)}
    with pytest.raises(InputError, match=r"one shape.*heads\.0\.bias is \(3,\) for task 0 "
                                         r"and \(5,\) for task 1"):
        build_superposition(model, snaps)


def test_shared_head_refuses_another_class_count() -> None:
    model = build_model(ModelConfig(arch="mlp", hidden=[4], head="shared"), (1, 1, 4), 3)
    assert "head" in model.masked_layers() and model.num_tasks == 0
    assert model.add_task(3) == 0 and model.num_tasks == 1
    with pytest.raises(ValueError, match="shared head is for 3 classes, but task 1 has 2"):
        model.add_task(2)


def test_superfluous_objective_is_supsups_g_and_its_gradient_matches_autograd() -> None:
    logits = torch.tensor([[2.0, 1.0, -1.0, -3.0, 0.5]], requires_grad=True)
    g = superfluous_lse(logits, 3)
    torch.testing.assert_close(g, torch.logsumexp(logits.detach(), dim=-1))
    g.sum().backward()
    assert logits.grad is not None
    assert (logits.grad[0, :3] == 0).all() and (logits.grad[0, 3:] > 0).all()
    with pytest.raises(ValueError, match="real class count"):
        objective("superfluous")
    # the head: 3 classes, 7 outputs; the formula's gradient equals autograd through alpha
    model = build_model(ModelConfig(arch="mlp", hidden=[6, 5], head="shared", head_outputs=7),
                        (1, 1, 4), num_classes=3)
    assert model.masked_layers()["head"].weight.shape[0] == 7
    sup = build_superposition(model, _random_tasks(model, 4))
    model.eval()
    model.set_mode("dense")
    x = torch.randn(3, 1, 1, 4, generator=torch.Generator().manual_seed(2))
    alpha = torch.tensor([0.4, 0.3, 0.2, 0.1])
    fn = objective("superfluous", 3)
    for b in range(3):
        torch.testing.assert_close(entropy_grads(model, sup, alpha, x[b:], "batch", fn=fn)[0],
                                   _autograd_alpha(model, sup, alpha, x[b:b + 1], fn))


def test_superfluous_outputs_need_a_wide_shared_head() -> None:
    from pipeline.errors import RecipeError
    from pipeline.recipe import recipe_from_dict

    with pytest.raises(RecipeError, match="head_outputs applies only to head: shared"):
        recipe_from_dict({"name": "r", "model": {"head_outputs": 100}})
    with pytest.raises(RecipeError, match="objective: superfluous reads the superfluous"):
        recipe_from_dict({"name": "r", "model": {"head": "shared"},
                          "evaluation": {"scenario": "task_inferred",
                                         "objective": "superfluous"}})
    with pytest.raises(RecipeError, match="2 outputs cannot hold the 3 classes"):
        build_model(ModelConfig(arch="mlp", hidden=[4], head="shared", head_outputs=2),
                    (1, 1, 4), 3)


def _separable(model, n_tasks: int, dim: int = 6):
    """Task t uses hidden unit t only: its first layer reads input t into unit t, its head reads
    unit t into class t % 3. Inputs of task t are one-hot at t, so only task t's tensors make the
    output peaked and dH/dalpha is negative for task t alone."""
    snaps = {}
    shape = model.masked_layers()["backbone.1"].weight.shape
    for t in range(n_tasks):
        w0 = torch.zeros(shape)
        w0[t, t] = 4.0
        head = torch.zeros(3, shape[0])
        head[t % 3, t] = 3.0
        snaps[t] = {"backbone.1.weight": w0, f"heads.{t}.weight": head,
                    f"heads.{t}.bias": torch.zeros(3)}
    x = torch.zeros(n_tasks * 4, 1, 1, dim)
    for t in range(n_tasks):
        x[t * 4:(t + 1) * 4, 0, 0, t] = 1.0
    return snaps, x


def _separable_net(n: int):
    """A tiny net with ``n`` separable tasks (``_separable``) in superposition: (model,
    snapshots, inputs, superposition)."""
    model = tiny_mlp(hidden=(6,), dim=6)
    for _ in range(n):
        model.add_task(3)
    snaps, x = _separable(model, n)
    return model, snaps, x, build_superposition(model, snaps)


@pytest.mark.parametrize("inference", ["one_shot", "binary"])
@pytest.mark.parametrize("per", ["sample", "batch"])
def test_inference_finds_the_task_whose_mask_fits_the_input(inference: str, per: str) -> None:
    n = 5
    model, snaps, x, sup = _separable_net(n)
    model.eval()
    model.set_mode("dense")
    if per == "sample":
        got = infer_tasks(model, sup, x, inference, "sample")  # type: ignore[arg-type]
        assert got.tolist() == [t for t in range(n) for _ in range(4)]
    else:
        for t in range(n):
            got = infer_tasks(model, sup, x[t * 4:(t + 1) * 4], inference,  # type: ignore
                              "batch")
            assert got.tolist() == [t]


def test_evaluate_inferred_classifies_with_the_inferred_task() -> None:
    n = 4
    model, snaps, x, sup = _separable_net(n)
    for t in range(n):
        xs = x[t * 4:(t + 1) * 4]
        y = snapshot_logits(model, snaps[t], t, xs, 8).argmax(1)
        acc, inf = evaluate_inferred(model, snaps, sup, t, Split(xs, y), 2, "one_shot",
                                     "sample")
        assert (acc, inf) == (100.0, 100.0)
    # labelled as if they came from task 0: inference is right only for task 0's inputs
    acc, inf = evaluate_inferred(model, snaps, sup, 0, Split(x, torch.zeros(len(x),
                                 dtype=torch.long)), 4, "binary", "batch")
    assert inf == 25.0


@pytest.mark.gpu
def test_inference_runs_on_the_gpu_with_host_snapshots() -> None:
    # snapshots come from the store in host memory; the model and data are on the GPU
    n = 4
    model = tiny_mlp(hidden=(6,), dim=6).cuda()
    for _ in range(n):
        model.add_task(3)
    snaps, x = _separable(model, n)
    sup = build_superposition(model, snaps)
    x = x.cuda()
    for t in range(n):
        xs = x[t * 4:(t + 1) * 4]
        y = snapshot_logits(model, snaps[t], t, xs, 8).argmax(1)
        assert evaluate_inferred(model, snaps, sup, t, Split(xs, y), 2, "binary",
                                 "sample") == (100.0, 100.0)


@pytest.mark.parametrize("inference", ["one_shot", "binary"])
def test_per_batch_decisions_made_at_once_equal_one_call_per_batch(inference: str) -> None:
    from pipeline.task_inference import _guesses

    model = tiny_mlp(hidden=(6,), dim=4, norm="per_task")
    sup = build_superposition(model, _random_tasks(model, 5, seed=3))
    model.eval()
    model.set_mode("dense")
    x = torch.randn(23, 1, 1, 4, generator=torch.Generator().manual_seed(4))
    got = _guesses(model, sup, x, 5, inference, "batch", False)  # type: ignore[arg-type]
    want = torch.cat([infer_tasks(model, sup, x[i:i + 5], inference, "batch")  # type: ignore
                      .expand(len(x[i:i + 5])) for i in range(0, 23, 5)])
    assert torch.equal(got, want)
