"""One task of each local-data stream through the whole pipeline, on fake data in the real layouts.

``split_cifar100``, ``five_datasets`` and ``tinyimagenet`` read data the user keeps locally
(``benchmark.data_dir``; five_datasets' MNIST and Fashion-MNIST come from the fetch cache,
``benchmark.cache_dir``). Each test writes a tiny data set with ``pipeline.data.testing``, runs
task 0 with ``run_recipe`` (train, compress, commit, re-open the store, re-evaluate) and checks
what the store and the result say about it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.data import build_stream
from pipeline.data.testing import (
    write_fake_cache,
    write_fake_cifar10,
    write_fake_cifar100,
    write_fake_notmnist,
    write_fake_svhn,
    write_fake_tinyimagenet,
)
from pipeline.recipe import recipe_from_dict
from pipeline.runner import run_recipe
from pipeline.session import RunResult
from pipeline.store import PackedStore


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The recipes set ``train.threads: 1`` (torch's setting is process-wide): on a machine with
    busy cores torch's default pool makes small runs many times slower. Put it back after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _recipe(tmp_path: Path, benchmark: dict[str, Any], model: dict[str, Any],
            method: dict[str, Any] | None = None):
    return recipe_from_dict({
        "name": f"local-{benchmark['stream']}",
        "benchmark": {"tasks": 1, "data_dir": str(tmp_path / "data"),
                      "cache_dir": str(tmp_path / "cache"), "val_fraction": 0.2, **benchmark},
        "model": model,
        "method": method or {"kind": "tsn", "density": 0.5, "policy": "split",
                             "prune": {"steps": 2, "finetune_epochs": 0},
                             "quantize": {"bits": [8]}},
        "train": {"epochs": 1, "lr": 0.01, "batch_size": 16, "eval_batch_size": 32,
                  "patience": 0, "threads": 1},
        "compression": {"default": {"sparsity": 0.3, "bits": 8}},
        "tracking": {"enabled": False},
        "output_dir": str(tmp_path / "runs"),
    })


def _check_one_task(result: RunResult, name: str, num_classes: int) -> PackedStore:
    """What every one-task run must satisfy; returns the store re-opened from disk."""
    assert result.store_path is not None and result.store_path.is_file()
    store = PackedStore.open(result.store_path)
    assert store.num_tasks == 1
    # the stream's task 0 is what was committed
    assert [r.name for r in result.tasks] == [name]
    meta = store.task_meta(0)
    assert meta["name"] == name and meta["num_classes"] == num_classes
    # the weights rebuilt from the store hold a head of the stream's width
    head = store.materialize(0)["heads.0.weight"]
    assert tuple(head.shape)[0] == num_classes
    # one accuracy row, re-measured from the store: the same number as at commit
    rows = result.matrix.as_list()
    assert len(rows) == 1 and len(rows[0]) == 1
    assert rows[0][0] == result.tasks[0].acc_at_commit
    assert 0.0 <= rows[0][0] <= 100.0
    assert result.bwt == 0.0
    # the store's bytes: the report's total, its components and the file agree
    size = result.store_path.stat().st_size
    metrics = store.report().as_metrics()
    assert metrics["store/bytes_total"] == size == result.store_metrics["store/bytes_total"]
    assert sum(metrics[f"store/bytes_{c}"] for c in
               ("codes", "masks", "codebooks", "tensors", "metadata")) == size
    saved = json.loads((result.run_dir / "results.json").read_text())
    assert saved["matrix"] == rows and saved["tasks"] == [name]
    assert saved["summary"]["store/bytes_total"] == size
    return store


def test_split_cifar100_one_task(tmp_path: Path) -> None:
    write_fake_cifar100(tmp_path / "data", train_per_class=6, test_per_class=2)
    recipe = _recipe(tmp_path, {"stream": "split_cifar100", "classes_per_task": 5},
                     {"arch": "mlp", "hidden": [16]})
    stream = build_stream(recipe.benchmark)
    assert len(stream) == 1 and stream.input_shape == (3, 32, 32)
    task = stream.load(0)
    assert len(task.test) == 5 * 2 and set(task.test.y.tolist()) == set(range(5))
    result = run_recipe(recipe)
    _check_one_task(result, "split_cifar100-0 (0,1,2,3,4)", 5)


def _write_five_datasets(tmp_path: Path) -> None:
    data, cache = tmp_path / "data", tmp_path / "cache"
    write_fake_cifar10(data, train_per_class=3, test_per_class=2)
    write_fake_svhn(data, train_per_class=3, test_per_class=2)
    write_fake_notmnist(data, per_letter=5, broken=1)
    write_fake_cache(cache, "mnist", train_per_class=3, test_per_class=2)
    write_fake_cache(cache, "fashion-mnist", train_per_class=3, test_per_class=2, seed=1)


def test_five_datasets_one_task(tmp_path: Path) -> None:
    _write_five_datasets(tmp_path)
    recipe = _recipe(tmp_path, {"stream": "five_datasets"}, {"arch": "mlp", "hidden": [16]})
    result = run_recipe(recipe)
    store = _check_one_task(result, "cifar10", 10)
    # the backbone read 3x32x32 inputs
    assert store.layers["backbone.1"] == (16, 3 * 32 * 32)


def test_five_datasets_every_task_is_3x32x32_with_10_classes(tmp_path: Path) -> None:
    """All five parts (local CIFAR-10, SVHN, notMNIST; cached MNIST, Fashion) load as the
    pipeline's task 0 does: padded to 32x32 and repeated to 3 channels."""
    _write_five_datasets(tmp_path)
    recipe = _recipe(tmp_path, {"stream": "five_datasets", "tasks": 5},
                     {"arch": "mlp", "hidden": [16]})
    stream = build_stream(recipe.benchmark)
    assert [stream.task_info(i) for i in range(5)] == [
        (n, 10) for n in ("cifar10", "mnist", "svhn", "fashion-mnist", "notmnist")]
    for i in range(5):
        task = stream.load(i)
        for split in (task.train, task.val, task.test):
            assert tuple(split.x.shape[1:]) == (3, 32, 32), (i, split.x.shape)
            assert split.y.min() >= 0 and split.y.max() < 10
        # 2 test images per class; notMNIST's test split is every 5th PNG of a letter: 1 each
        assert len(task.test) == (10 if task.name == "notmnist" else 20), task.name


def _write_tinyimagenet(tmp_path: Path) -> None:
    wnids = write_fake_tinyimagenet(tmp_path / "data", classes=6, train_per_class=4,
                                    val_per_class=2)
    assert len(wnids) == 6


def test_tinyimagenet_one_task(tmp_path: Path) -> None:
    _write_tinyimagenet(tmp_path)
    recipe = _recipe(tmp_path, {"stream": "tinyimagenet", "classes_per_task": 3},
                     {"arch": "mlp", "hidden": [16], "norm": "per_task"})
    stream = build_stream(recipe.benchmark)
    assert len(stream) == 1 and stream.input_shape == (3, 64, 64)
    task = stream.load(0)  # 3 of the 6 classes: 2 val images each become the test split
    assert len(task.test) == 3 * 2 and sorted(set(task.test.y.tolist())) == [0, 1, 2]
    result = run_recipe(recipe)
    store = _check_one_task(result, "tinyimagenet-0", 3)
    assert store.layers["backbone.1"] == (16, 3 * 64 * 64)
    # per-task norms are stored with the task
    assert any(".norms.0." in k for k in store.materialize(0))


def test_tinyimagenet_tinynet_one_task(tmp_path: Path) -> None:
    """The paper's TinyImageNet backbone (4 strided 160-channel convs) on 64x64 inputs."""
    _write_tinyimagenet(tmp_path)
    recipe = _recipe(tmp_path, {"stream": "tinyimagenet", "classes_per_task": 3},
                     {"arch": "tinynet", "norm": "per_task"})
    result = run_recipe(recipe)
    store = _check_one_task(result, "tinyimagenet-0", 3)
    assert store.layers["backbone.0"] == (160, 3, 3, 3)
    assert store.layers["backbone.11"] == (640, 160 * 4 * 4)
