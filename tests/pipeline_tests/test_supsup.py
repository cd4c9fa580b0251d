"""SupSup invariants (docs/methods.md): the backbone is a signed constant that never moves and is
stored once as the store's base; a task is its mask (exact density) plus its head; old tasks'
logits are bit-identical after later tasks; a task costs masks + head bytes, no own codes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from pipeline.compress import host_commit, task_tensors, trained_layers
from pipeline.errors import StoreError
from pipeline.evaluation import committed_snapshot, snapshot_logits
from pipeline.methods import SupSup
from pipeline.recipe import SupSupMethod, TrainConfig
from pipeline.store import LayerCommit, PackedStore, TaskCommit
from pipeline.train import make_optimizer, train_task
from tests.pipeline_tests._tiny import tiny_mlp, tiny_task

CFG = TrainConfig(lr=0.01, epochs=2, batch_size=16, eval_batch_size=32)
PROBE = torch.randn(20, 1, 1, 8, generator=torch.Generator().manual_seed(9))


def _method(norm: str = "none", density: float = 0.3) -> SupSup:
    method = SupSup(tiny_mlp(norm=norm), SupSupMethod(density=density, optimizer="adam"))
    method.setup()
    return method


def _learn_and_commit(method: SupSup, store: PackedStore, t: int) -> None:
    task = tiny_task(t)
    method.model.add_task(task.num_classes)
    method.begin_task(t, store, task)
    train_task(method, t, task, CFG)
    masks = method.end_task(t)
    store.commit(host_commit(t, {n: r for n, r in trained_layers(method, t, masks).items()},
                             task_tensors(method.model, t), {"num_classes": 3}))
    method.after_commit(t, store)


def _store(tmp_path: Path, method: SupSup) -> PackedStore:
    return PackedStore.create(tmp_path / "s.tpk", method.model.layer_shapes(), "tiny")


def test_the_backbone_is_a_signed_kaiming_constant_that_takes_no_gradient() -> None:
    method = _method()
    for layer in method.model.masked_layers().values():
        scale = torch.tensor(math.sqrt(2.0 / layer.weight.shape[1]), dtype=torch.float32)
        assert torch.equal(layer.weight.detach().abs(), scale.expand_as(layer.weight))
        assert (layer.weight > 0).any() and (layer.weight < 0).any()
        assert not layer.weight.requires_grad


def test_training_moves_scores_and_head_only_and_masks_have_the_exact_density() -> None:
    method = _method(density=0.3)
    weights = {n: m.weight.detach().clone() for n, m in method.model.masked_layers().items()}
    task = tiny_task(0)
    method.model.add_task(3)
    method.begin_task(0, None, task)
    scores = {n: m.score.detach().clone() for n, m in method.model.masked_layers().items()}
    train_task(method, 0, task, CFG)
    masks = method.end_task(0)
    for n, layer in method.model.masked_layers().items():
        assert torch.equal(layer.weight.detach(), weights[n])
        assert not torch.equal(layer.score.detach(), scores[n])
        assert int(masks.mask[n].sum()) == round(0.3 * layer.weight.numel())
        assert not masks.own[n].any() and torch.equal(masks.shared[n], masks.mask[n])


def test_the_phase_uses_the_configured_optimizer() -> None:
    method = SupSup(tiny_mlp(), SupSupMethod())  # default: RMSProp, as SupSup on MNIST
    method.setup()
    method.model.add_task(3)
    (phase,) = method.phases(0)
    assert phase.optimizer == "rmsprop"
    opt = make_optimizer(phase.param_groups, CFG.model_copy(update={"optimizer": "rmsprop"}))
    assert isinstance(opt, torch.optim.RMSprop)
    trained = {id(p) for g in phase.param_groups for p in g["params"]}
    assert not any(id(m.weight) in trained for m in method.model.masked_layers().values())


@pytest.mark.parametrize("norm", ["none", "per_task"])
def test_tasks_are_masks_over_the_stored_base_and_never_change(tmp_path: Path,
                                                               norm: str) -> None:
    method = _method(norm=norm)
    store = _store(tmp_path, method)
    recorded = []
    for t in range(3):
        _learn_and_commit(method, store, t)
        assert store.has_base  # written before task 0 trained
        recorded.append(snapshot_logits(method.model, committed_snapshot(store, t), t, PROBE, 10))
        # the live view of the task is what the store holds
        live = snapshot_logits(method.model, method.snapshot(t), t, PROBE, 10)
        assert torch.equal(live, recorded[t])
    base = store.base_weights()
    assert base is not None
    for n, layer in method.model.masked_layers().items():
        assert torch.equal(layer.weight.detach(), base[n])
    reopened = PackedStore.open(store.path)
    for t in range(3):
        snap = committed_snapshot(reopened, t)
        assert torch.equal(snapshot_logits(method.model, snap, t, PROBE, 10), recorded[t])
        mask = reopened.task_masks(t)
        for n in base:
            assert torch.equal(snap[f"{n}.weight"], torch.where(mask[n], base[n], 0.0))
    if norm == "per_task":  # each task keeps its own BN statistics
        assert any(".norms.2.running_mean" in k for k in committed_snapshot(reopened, 2))


def test_a_task_costs_its_masks_and_head_only(tmp_path: Path) -> None:
    method = _method()
    store = _store(tmp_path, method)
    for t in range(2):
        _learn_and_commit(method, store, t)
    report = store.report()
    n = sum(math.prod(s) for s in store.layers.values())
    assert report.bytes["base"] == sum(4 + (math.prod(s) + 7) // 8
                                       for s in store.layers.values())
    assert report.bytes["base"] < n / 8 + 4 * len(store.layers) + 1
    head = sum(v.numel() * 4 for v in task_tensors(method.model, 1).values())
    for task in report.tasks:
        assert task.own == 0 and task.shared == sum(lr.count for lr in task.layers)
        assert task.bytes["codes"] == 0 and task.bytes["codebooks"] == 0
        assert task.bytes["tensors"] == head
        # masks at density 0.3 cost about n * H(0.3) bits (+ a few bytes per layer)
        assert task.bytes["masks"] < n * 0.8816 / 8 * 1.05 + 16 * len(task.layers)


def test_resume_reads_the_backbone_from_the_store(tmp_path: Path) -> None:
    method = _method()
    store = _store(tmp_path, method)
    _learn_and_commit(method, store, 0)
    again = SupSup(tiny_mlp(seed=5), SupSupMethod(density=0.3))  # another seed: other signs
    again.setup()
    again.model.add_task(3)
    again.after_commit(0, PackedStore.open(store.path))
    for n, layer in again.model.masked_layers().items():
        assert torch.equal(layer.weight.detach(), method.model.masked_layers()[n].weight)
    assert len(again.masks) == 1 and all(torch.equal(again.masks[0][n], method.masks[0][n])
                                         for n in again.masks[0])


def test_a_store_with_tasks_and_no_base_is_refused(tmp_path: Path) -> None:
    method = _method()
    store = _store(tmp_path, method)
    shapes = store.layers
    store.commit(TaskCommit(0, {n: LayerCommit(torch.zeros(s, dtype=torch.bool),
                                               torch.zeros(s, dtype=torch.bool), 32,
                                               torch.zeros(s)) for n, s in shapes.items()}, {}))
    method.model.add_task(3)
    with pytest.raises(StoreError, match="holds 1 task.* but no fixed backbone"):
        method.begin_task(1, store)


def test_quantize_is_refused_with_one_clear_line() -> None:
    from pipeline.errors import RecipeError
    from pipeline.recipe import recipe_from_dict

    with pytest.raises(RecipeError, match="supsup tasks store no own values"):
        recipe_from_dict({"name": "s", "method": {"kind": "supsup", "quantize": {"bits": [4]}}})


def _small_run(tmp_path: Path, name: str, density: float, hidden: int) -> dict:
    """A 2-task Permuted MNIST supsup recipe small enough for a test, compiled for the host."""
    return {
        "name": name, "output_dir": str(tmp_path / "runs"),
        "method": {"kind": "supsup", "density": density, "optimizer": "adam"},
        "benchmark": {"stream": "permuted_mnist", "tasks": 2, "train_limit": 600,
                      "test_limit": 200, "val_fraction": 0.01},
        "model": {"arch": "mlp", "hidden": [hidden, hidden], "head_bias": False},
        "train": {"epochs": 1, "lr": 0.01, "batch_size": 32, "eval_batch_size": 100},
        "targets": [{"name": "host", "backend": "tvm"}], "tracking": {"enabled": False}}


@pytest.mark.slow
@pytest.mark.tvm
def test_run_inspect_and_export_a_supsup_store(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A real run commits mask-only tasks over the base; `taskpack inspect` shows the base line
    and zero own codes; `taskpack export` compiles the masked fixed backbone with TVM, whose
    logits match the store's."""
    from compilers import load_bundle
    from pipeline.cli import main
    from pipeline.data import build_stream
    from pipeline.recipe import recipe_from_dict
    from pipeline.runner import prepare, run_recipe

    recipe = recipe_from_dict(_small_run(tmp_path, "supsup-export", 0.3, 32))
    result = run_recipe(recipe)
    assert result.bwt == 0.0 and all(a > 20.0 for a in result.matrix.final)
    assert main(["inspect", str(result.store_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bytes"]["base"] > 0 and report["bytes"]["codes"] == 0
    assert all(t["own"] == 0 and t["bytes"]["codebooks"] == 0 for t in report["tasks"])
    assert main(["inspect", str(result.store_path)]) == 0
    assert "base " in capsys.readouterr().out
    out = tmp_path / "exports"
    assert main(["export", str(result.store_path), "--all-tasks", "--target", "host",
                 "--out", str(out)]) == 0
    store = PackedStore.open(result.store_path)
    x = build_stream(recipe.benchmark).load(0).test.x[:1]
    model = prepare(recipe).model
    for t in range(2):
        model.add_task(10)
        bundle = load_bundle(out / "host" / f"task-{t}")
        assert bundle.manifest["task"] == t and bundle.manifest["numerics"]["passed"]
        ref = snapshot_logits(model, committed_snapshot(store, t), t, x, 1)
        got = bundle.run(x)
        assert (got - ref).abs().max() / ref.abs().max() < 1e-4


@pytest.mark.slow
@pytest.mark.tvm
def test_search_prunes_the_masks_in_blocks_and_export_runs_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """SupSup + search with real TVM latency: per task the search picks how much of each layer's
    mask to drop in 4x1 blocks; the committed mask is the chosen plan (no own codes), every task
    stays bit-identical (BWT 0) and the exported bundle runs the masked backbone."""
    from compilers import load_bundle
    from pipeline.cli import main
    from pipeline.export import export_tasks
    from pipeline.models import topc_mask
    from pipeline.recipe import recipe_from_dict
    from pipeline.runner import run_recipe
    from search import SearchCompressor

    recipe = recipe_from_dict({
        **_small_run(tmp_path, "supsup-search", 0.5, 64),
        "search": {"enabled": True, "trials": 3, "sampler": "random",
                   "space": [{"match": ".*", "sparsity": [0.0, 0.6], "sparsity_step": 0.6,
                              "patterns": ["block(4,1)"]}],
                   "constraints": {"max_acc_drop": None},
                   "selection": {"policy": "min_latency_within_acc_drop", "value": 100.0}}})
    result = run_recipe(recipe, compressor=SearchCompressor(recipe))
    assert result.bwt == 0.0
    store = PackedStore.open(result.store_path)
    assert main(["inspect", str(result.store_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bytes"]["base"] > 0 and report["bytes"]["codes"] == 0
    assert all(t["own"] == 0 for t in report["tasks"])
    for t in range(2):
        chosen = json.loads((result.run_dir / "search" / f"task-{t}" / "chosen.json")
                            .read_text())["params"]
        assert not any(k.endswith(".bits") for k in chosen)  # nothing own to quantize
        masks = store.task_masks(t)
        for name, mask in masks.items():
            trained = int(topc_mask(torch.rand(mask.shape), 0.5).sum())
            sparsity = chosen.get(f"{name}.sparsity", 0.0)
            if sparsity > 0:  # whole 4x1 blocks left the mask
                assert int(mask.sum()) <= trained * (1 - sparsity) + 4
            else:
                assert int(mask.sum()) == trained
    bundles = export_tasks(result.store_path, None, "host", None, tmp_path / "exports", (1,))
    assert bundles
    for path in bundles:
        assert load_bundle(path).manifest["numerics"]["passed"]
