"""The search on a CNN (real Split Fashion-MNIST at 32x32, narrow AlexNet-like net, real TVM
builds): conv layers get block / channel / n:m plans with truthful labels, the chosen plans are
committed with BWT 0, and the exported builds compute the store's logits (slow, tvm)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compilers import load_bundle
from pipeline.cli import main
from pipeline.data import build_stream
from pipeline.evaluation import committed_snapshot, snapshot_logits
from pipeline.models import build_model
from pipeline.recipe import recipe_from_dict
from pipeline.runner import run_recipe
from pipeline.store import PackedStore
from search import SearchCompressor, study_name

pytestmark = [pytest.mark.slow, pytest.mark.tvm]

CONV_PATTERNS = {"block(16,1)", "channel", "2:4"}


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    threads = torch.get_num_threads()  # the recipe sets train.threads (process-wide)
    yield
    torch.set_num_threads(threads)


def _recipe(tmp_path: Path):
    return recipe_from_dict({
        "name": "cnn-search",
        "benchmark": {"stream": "split_fmnist", "tasks": 2, "pad_to": 32, "train_limit": 200,
                      "test_limit": 50, "val_fraction": 0.2},
        "model": {"arch": "alexnet", "alexnet_widths": [16, 32, 64, 64, 64],
                  "norm": "per_task"},
        "method": {"kind": "tsn", "density": 0.5, "policy": "split"},
        "train": {"epochs": 1, "batch_size": 32, "eval_batch_size": 50, "patience": 0,
                  "threads": 1},
        "search": {
            "enabled": True, "trials": 2, "sampler": "random",
            "space": [{"match": r"backbone\.(0|4|8)", "sparsity": [0.75, 0.75],
                       "patterns": sorted(CONV_PATTERNS), "bits": [8]},
                      {"match": ".*", "sparsity": [0.75, 0.75], "patterns": ["block(16,1)"],
                       "bits": [8]}],
            "constraints": {"max_acc_drop": 100.0},
            "selection": {"policy": "min_latency_within_acc_drop", "value": 100.0}},
        "targets": [{"name": "host", "backend": "tvm", "transforms": ["shrink", "block_sparse"]}],
        "tracking": {"enabled": False},
        "output_dir": str(tmp_path / "runs"),
    })


def test_cnn_search_commits_exports_and_labels_conv_patterns(tmp_path: Path) -> None:
    import optuna
    from optuna.storages.journal import JournalFileBackend

    recipe = _recipe(tmp_path)
    result = run_recipe(recipe, compressor=SearchCompressor(recipe))
    assert result.bwt == 0.0
    rows = result.matrix.as_list()
    assert rows[1][0] == rows[0][0]

    seen: set[str] = set()
    for t in range(2):
        journal = result.run_dir / "search" / f"task-{t}.journal"
        study = optuna.load_study(study_name=study_name(recipe, t), storage=(
            optuna.storages.JournalStorage(JournalFileBackend(str(journal)))))
        trials = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
        assert len(trials) == 2
        for trial in trials:
            labels = trial.user_attrs["labels"]
            for conv in ("backbone.0", "backbone.4", "backbone.8"):
                pattern = trial.params[f"{conv}.pattern"]
                seen.add(pattern)
                assert pattern in CONV_PATTERNS
                # conv1 is 16 x (1*4*4): 16x1 blocks fit; 2:4 has no kernel: storage only
                want = "storage-only" if pattern == "2:4" else "speed-realizable"
                assert labels[conv] == want, (conv, pattern)
            assert labels["backbone.13"] == "speed-realizable"  # 64 x 256 in 16x1 blocks
    assert len(seen) >= 2  # the conv patterns were searched, not fixed

    out = tmp_path / "exports"
    assert main(["export", str(result.store_path), "--all-tasks", "--target", "host",
                 "--batch", "1", "--no-track", "--out", str(out)]) == 0
    store = PackedStore.open(result.store_path)
    model = build_model(recipe.model, (1, 32, 32))
    stream = build_stream(recipe.benchmark)
    for t in range(2):
        model.add_task(2)
        bundle = load_bundle(out / "host" / f"task-{t}")
        assert bundle.manifest["numerics"]["passed"]
        x = stream.load(t).test.x[:1]
        ref = snapshot_logits(model, committed_snapshot(store, t), t, x, 1)
        assert float((bundle.run(x) - ref).abs().max() / ref.abs().max()) < 1e-4
