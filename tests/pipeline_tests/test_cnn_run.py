"""A two-task TSN run of a CNN on fake Split CIFAR-100: structured compression of conv layers,
per-task and stateless norms, and nothing a later task does changes an earlier one.

TSN's ``split`` policy lets task 1 put its own codes into free bits of positions task 0 holds, and
the plan prunes convs in 4x1 blocks and whole channels: all of it must leave task 0's weights, and
so its logits, bit-identical after task 1 is committed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

import pipeline.runner as runner
from pipeline.data import build_stream
from pipeline.data.testing import write_fake_cifar100
from pipeline.evaluation import committed_snapshot, snapshot_logits
from pipeline.recipe import recipe_from_dict
from pipeline.runner import run_recipe
from pipeline.store import PackedStore

# the layers the ``channel`` rule prunes: resnet18's second conv of every block (its layers are
# backbone.conv1, backbone.blocks.<i>.conv1|conv2|shortcut.0), alexnet's 2nd and 3rd conv (its
# layers are backbone.0, .4, .8 convs and backbone.13, .16 fcs)
CHANNEL_LAYERS = {"resnet18": r"backbone\.blocks\.[0-9]+\.conv2", "alexnet": r"backbone\.(4|8)"}
EVAL_BS = 16


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The recipes set ``train.threads: 1`` (torch's setting is process-wide): with two busy
    cores, torch's default pool makes these runs ~20x slower. Put it back for other tests."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _recipe(tmp_path: Path, norm: str, arch: str = "resnet18", **model: Any):
    return recipe_from_dict({
        "name": f"cnn-{arch}-{norm}",
        "benchmark": {"stream": "split_cifar100", "tasks": 2, "classes_per_task": 5,
                      "data_dir": str(tmp_path / "data"), "val_fraction": 0.25},
        "model": {"arch": arch, "width": 4, "norm": norm, **model},
        # delta 100: every pruning step and the 8-bit width are accepted, so the plan is met
        # exactly whatever the (chance-level) accuracy on random images does
        "method": {"kind": "tsn", "density": 0.5, "policy": "split",
                   "prune": {"steps": 100, "step_fraction": 0.5, "delta": 100.0,
                             "finetune_epochs": 0},
                   "quantize": {"bits": [4, 8], "delta": 100.0}},
        "train": {"epochs": 1, "lr": 0.01, "batch_size": 16, "eval_batch_size": EVAL_BS,
                  "patience": 0, "threads": 1},
        "compression": {
            "default": {"sparsity": 0.5, "pattern": "block(4,1)", "bits": 8},
            "rules": [{"match": CHANNEL_LAYERS[arch], "sparsity": 0.25, "pattern": "channel",
                       "bits": 8}],
        },
        "tracking": {"enabled": False},
        "output_dir": str(tmp_path / "runs"),
    })


def _run_recording_logits(recipe, monkeypatch: pytest.MonkeyPatch):
    """Run the recipe; after every commit, the logits of every committed task rebuilt from the
    store file, on a fixed probe batch of task 0's test images."""
    probe = build_stream(recipe.benchmark).load(0).test.x
    recorded: list[list[torch.Tensor]] = []
    real_commit = runner.commit_task

    def commit_and_record(s, task, compressed, tensors):  # noqa: ANN001 - commit_task's own
        real_commit(s, task, compressed, tensors)
        store = PackedStore.open(s.store.path)  # rebuilt from the file on disk
        weights = store.materialize(task.index)
        for name, r in compressed.layers.items():  # exactly the weights evaluated at commit
            assert torch.equal(weights[name], torch.where(r.mask, r.values, 0.0)), name
        for name, value in tensors.items():
            assert torch.equal(weights[name], value), name
        recorded.append([snapshot_logits(s.model, committed_snapshot(store, j), j, probe,
                                         EVAL_BS) for j in range(task.index + 1)])

    monkeypatch.setattr(runner, "commit_task", commit_and_record)
    return run_recipe(recipe), recorded


@pytest.mark.parametrize(("arch", "norm"), [
    ("resnet18", "per_task"),
    ("resnet18", "stateless"),
    pytest.param("alexnet", "per_task", marks=pytest.mark.slow),  # 6.5M weights: ~8 s each
    pytest.param("alexnet", "stateless", marks=pytest.mark.slow),
])
def test_tsn_split_cnn_never_changes_an_earlier_task(tmp_path: Path, arch: str, norm: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    write_fake_cifar100(tmp_path / "data", train_per_class=8, test_per_class=2)
    recipe = _recipe(tmp_path, norm, arch)
    result, recorded = _run_recording_logits(recipe, monkeypatch)

    rows = result.matrix.as_list()
    assert len(rows) == 2 and rows[0][1] is None
    assert rows[1][0] == rows[0][0]  # task 0 re-measured from the store after task 1
    assert result.bwt == 0.0
    assert [r.acc_at_commit for r in result.tasks] == [rows[0][0], rows[1][1]]
    assert len(recorded) == 2 and [len(r) for r in recorded] == [1, 2]
    assert recorded[0][0].shape == (10, 5)  # 5 classes x 2 test images, task 0's head
    assert torch.equal(recorded[1][0], recorded[0][0])  # task 0's logits: bit-identical

    store = PackedStore.open(result.store_path)
    assert store.num_tasks == 2
    assert [(store.task_meta(t)["name"], store.task_meta(t)["num_classes"]) for t in range(2)] == [
        ("split_cifar100-0 (0,1,2,3,4)", 5), ("split_cifar100-1 (5,6,7,8,9)", 5)]
    per_task_norms = [k for k in store.materialize(1) if ".norms." in k]
    if norm == "per_task":  # task 1's own norms are stored with it; none otherwise
        assert per_task_norms and all(".norms.1." in k for k in per_task_norms)
    else:
        assert per_task_norms == []
    report = store.report()
    assert report.as_metrics()["store/bytes_total"] == result.store_path.stat().st_size
    # the split policy was exercised: task 1 put own codes into positions task 0 holds
    split = [sum(layer.split for layer in t.layers) for t in report.tasks]
    assert split[0] == 0 and split[1] > 0, split

    channel = [n for n in store.layers if re.fullmatch(CHANNEL_LAYERS[arch], n)]
    assert channel and len(channel) < len(store.layers)
    for t, rec in enumerate(result.tasks):
        stats = rec.compression
        own = {layer.name: layer.own for layer in report.tasks[t].layers}
        for name in store.layers:  # delta 100: the plan is met, the narrowest width taken
            want = 0.25 if name in channel else 0.5
            assert stats[f"{name}.pruned"] >= want - 1e-9, (t, name)
            assert stats[f"{name}.bits"] == (4 if own[name] else 32), (t, name)
        masks = store.task_masks(t)
        for name in channel:  # channel pruning empties whole filters of the task's mask
            used = masks[name].reshape(masks[name].shape[0], -1).any(1)
            assert not used.all(), (t, name)
