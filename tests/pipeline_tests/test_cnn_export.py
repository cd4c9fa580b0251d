"""A CNN continual run on real Split Fashion-MNIST at 32x32, end to end: TSN with conv layers
pruned by n:m, 16x1 blocks over the (O, C*kh*kw) view and whole channels, tracked in MLflow,
committed to the store, then exported with TVM (fp32 and int8) and the compiled logits compared
with the logits PyTorch computes from the store. Per-task and stateless BatchNorm both run
(slow, tvm).

The narrow AlexNet-like net (``model.alexnet_widths``) keeps it to seconds per TVM build; its
layers are ``backbone.0``, ``.4``, ``.8`` (convs 16/32/64) and ``.13``, ``.16`` (fcs 128).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compilers import apply_transforms, load_bundle
from compilers.ops import BlockSparseConv2d, BlockSparseLinear
from compilers.ops.int8 import Int8Linear
from pipeline.cli import main
from pipeline.data import build_stream
from pipeline.evaluation import committed_snapshot, snapshot_logits
from pipeline.models import build_model
from pipeline.recipe import recipe_from_dict
from pipeline.runner import run_recipe
from pipeline.store import PackedStore
from pipeline.subnet import task_module
from pipeline.tracking import build_tracker

pytestmark = [pytest.mark.slow, pytest.mark.tvm]

WIDTHS = [16, 32, 64, 128, 128]
# fp32 build vs PyTorch on the store's weights: summation order only. int8 weights (the fcs;
# convs stay fp32) move logits by the quantization error, about 1 % of their range here.
RTOL = {"host": 1e-4, "host-int8": 5e-2}


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()  # the recipe sets train.threads (process-wide)
    yield
    torch.set_num_threads(threads)


def _recipe(tmp_path: Path, norm: str):
    return recipe_from_dict({
        "name": f"cnn-export-{norm}",
        "benchmark": {"stream": "split_fmnist", "tasks": 2, "pad_to": 32, "train_limit": 200,
                      "test_limit": 50, "val_fraction": 0.2},
        "model": {"arch": "alexnet", "alexnet_widths": WIDTHS, "norm": norm},
        # delta 100: every pruning step and the 8-bit width are accepted, so the plan is met
        "method": {"kind": "tsn", "density": 0.5, "policy": "split",
                   "prune": {"steps": 100, "step_fraction": 0.5, "delta": 100.0,
                             "finetune_epochs": 0},
                   "quantize": {"bits": [8], "delta": 100.0}},
        "train": {"epochs": 1, "batch_size": 32, "eval_batch_size": 50, "patience": 0,
                  "threads": 1},
        "compression": {
            "default": {"sparsity": 0.75, "pattern": "block(16,1)", "bits": 8},
            "rules": [{"match": "backbone.0", "sparsity": 0.5, "pattern": "2:4", "bits": 8},
                      {"match": "backbone.8", "sparsity": 0.25, "pattern": "channel",
                       "bits": 8}],
        },
        "targets": [{"name": "host", "backend": "tvm", "transforms": ["shrink", "block_sparse"]},
                    {"name": "host-int8", "backend": "tvm",
                     "transforms": ["shrink", "block_sparse", "int8"]}],
        "tracking": {"uri": f"sqlite:///{tmp_path / 'mlruns/mlflow.db'}",
                     "artifact_location": str(tmp_path / "mlruns/artifacts")},
        "output_dir": str(tmp_path / "runs"),
    })


# the batch the bundles are compiled for: a stateless net needs >= 2 (batch statistics)
@pytest.mark.parametrize(("norm", "batch"), [("per_task", 1), ("stateless", 4)])
def test_cnn_tsn_run_store_export_numerics(tmp_path: Path, norm: str, batch: int,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from mlflow.tracking import MlflowClient

    recipe = _recipe(tmp_path, norm)
    result = run_recipe(recipe, build_tracker(recipe.tracking))
    assert result.bwt == 0.0
    rows = result.matrix.as_list()
    assert rows[1][0] == rows[0][0]  # task 0 re-measured from the store after task 1

    client = MlflowClient(tracking_uri=recipe.tracking.uri)
    exp = client.get_run(result.run_id).info.experiment_id
    tasks = client.search_runs([exp], f"tags.mlflow.parentRunId = '{result.run_id}'")
    assert sorted(r.info.run_name for r in tasks) == ["task-0", "task-1"]
    for r in tasks:
        assert r.data.metrics["store/bytes_total"] > 0

    store = PackedStore.open(result.store_path)
    masks = store.task_masks(0)  # task 0 owns every weight it uses
    conv1 = masks["backbone.0"].reshape(WIDTHS[0], -1, 4)
    assert int(conv1.sum(2).max()) <= 2  # 2:4 over the (O, C*kh*kw) view
    filters = masks["backbone.8"].reshape(WIDTHS[2], -1).any(1)
    assert 0 < int((~filters).sum()) < WIDTHS[2]  # whole filters of conv3 pruned

    model = build_model(recipe.model, (1, 32, 32))
    for _ in range(2):
        model.add_task(2)
    module = task_module(model, committed_snapshot(store, 0), 0)
    prepared = apply_transforms(module, ["shrink", "block_sparse"])
    kinds = [type(m) for m in prepared]
    assert BlockSparseConv2d in kinds and BlockSparseLinear in kinds
    convs = [m for m in prepared if isinstance(m, torch.nn.Conv2d | BlockSparseConv2d)]
    assert convs[2].weight.shape[0] == int(filters.sum())  # shrink removed the empty filters
    int8 = apply_transforms(module, ["shrink", "block_sparse", "int8"])
    assert any(isinstance(m, Int8Linear) or getattr(m, "scale", None) is not None
               for m in int8.modules())

    out = tmp_path / "exports"
    if norm == "stateless":  # one image has no batch statistics: refused in one line
        assert main(["export", str(result.store_path), "--task", "0", "--target", "host",
                     "--batch", "1", "--out", str(out)]) == 2
        assert "--batch sizes must be >= 2, got [1]" in capsys.readouterr().err
    stream = build_stream(recipe.benchmark)
    for target, rtol in RTOL.items():
        assert main(["export", str(result.store_path), "--all-tasks", "--target", target,
                     "--batch", str(batch), "--out", str(out)]) == 0
        for t in range(2):
            bundle = load_bundle(out / target / f"task-{t}")
            assert bundle.manifest["numerics"]["passed"]
            assert bundle.manifest["input_shape"] == [batch, 1, 32, 32]
            assert ("int8" in bundle.manifest["transforms"]) == (target == "host-int8")
            x = stream.load(t).test.x[:batch]
            ref = snapshot_logits(model, committed_snapshot(store, t), t, x, batch)
            got = bundle.run(x)
            err = float((got - ref).abs().max() / ref.abs().max())
            assert err < rtol, (target, t, err)
