"""Training device: ``train.device`` resolution, bf16 autocast, and (marked ``gpu``) runs on CUDA
whose store evaluates the same on the GPU and on the CPU.

The ``gpu`` tests skip cleanly without a GPU (tests/conftest.py); docs/training.md carries the
figures of their last run on a GPU machine.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import pytest
import torch

from compilers.threads import all_cores
from pipeline.cli import main
from pipeline.compress import PlanCompressor
from pipeline.device import keep_freed_memory, resolve_device
from pipeline.evaluation import committed_snapshot, snapshot_logits
from pipeline.models import build_model
from pipeline.recipe import Recipe, TrainConfig, recipe_from_dict
from pipeline.runner import prepare, run_recipe
from pipeline.store import PackedStore

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


def _recipe(tmp_path: Path, **train: Any) -> Recipe:
    return recipe_from_dict({
        "name": "dev", "output_dir": str(tmp_path / "runs"),
        "method": {"kind": "tsn", "density": 0.5, "prune": {"steps": 2},
                   "quantize": {"bits": [4, 8]}},
        "benchmark": {"stream": "permuted_mnist", "tasks": 2, "train_limit": 600,
                      "test_limit": 200, "val_fraction": 0.2},
        "model": {"arch": "mlp", "hidden": [32, 32]},
        "train": {"epochs": 2, "lr": 0.01, "batch_size": 32, "eval_batch_size": 100, **train},
        "compression": {"default": {"sparsity": 0.3, "bits": 8}},
    })


def _assert_no_forgetting(recipe: Recipe) -> PackedStore:
    result = run_recipe(recipe, compressor=PlanCompressor())
    rows = result.matrix.as_list()
    assert rows[1][0] == rows[0][0] and result.bwt == 0.0  # re-measured from the store
    assert all(a > 20.0 for a in result.matrix.final), result.matrix.final  # chance: 10%
    return PackedStore.open(result.store_path)


# ---- everywhere -------------------------------------------------------------------------------
def test_auto_trains_on_cpu_without_gpu_and_uses_every_core() -> None:
    dev = resolve_device(TrainConfig())
    assert dev.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert dev.threads == all_cores() and not dev.bf16
    assert resolve_device(TrainConfig(threads=1, device="cpu")).threads == 1


@no_gpu
def test_cuda_recipe_without_gpu_is_one_line_and_exit_2(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: cuda\noutput_dir: {tmp_path / 'runs'}\n"
                      "train: {device: cuda}\n")
    assert main(["run", str(recipe), "--no-track"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.device is cuda" in err[0], err
    assert not (tmp_path / "runs" / "cuda" / "store.tpk").exists()  # nothing trained


def test_bf16_autocast_run_commits_without_forgetting(tmp_path: Path) -> None:
    # bf16 changes only the training forward pass; commits and re-tests stay fp32 and exact
    _assert_no_forgetting(_recipe(tmp_path, precision="bf16", threads=1, device="cpu"))


# ---- on a GPU ---------------------------------------------------------------------------------
@pytest.mark.gpu
def test_session_lives_on_the_gpu(tmp_path: Path) -> None:
    s = prepare(_recipe(tmp_path, device="cuda"))
    assert s.device.device.type == "cuda"
    assert all(p.is_cuda for p in s.model.parameters())
    assert all(p.is_cuda for p in s.scratch.parameters())
    assert all(m.is_cuda for m in s.method.consolidated.values())  # type: ignore[attr-defined]
    task = s.load_task(0)
    assert task.train.x.is_cuda and task.test.y.is_cuda
    s.model.add_task(task.num_classes)
    assert all(p.is_cuda for p in s.model.heads[0].parameters())


@pytest.mark.gpu
def test_gpu_run_store_evaluates_the_same_on_gpu_and_cpu(tmp_path: Path) -> None:
    recipe = _recipe(tmp_path, device="cuda")
    store = _assert_no_forgetting(recipe)
    s = prepare(recipe)  # continues the finished run: loads the stream, builds the model
    shape = s.stream.input_shape
    for device in ("cpu", "cuda"):
        model = build_model(recipe.model, shape).to(device)
        for t in range(store.num_tasks):
            model.add_task(s.stream.task_info(t)[1])
        logits = []
        for t in range(store.num_tasks):
            x = s.stream.load(t).test.x.to(device)
            first = snapshot_logits(model, committed_snapshot(store, t), t, x, 100)
            again = snapshot_logits(model, committed_snapshot(store, t), t, x, 100)
            assert torch.equal(first, again)  # bit-identical on one device
            logits.append(first.cpu())
        if device == "cpu":
            on_cpu = logits
    for cpu, gpu in zip(on_cpu, logits, strict=True):
        # documented tolerance (docs/training.md): fp32 kernels differ in summation order only
        torch.testing.assert_close(gpu, cpu, rtol=1e-4, atol=1e-4)
        assert torch.equal(gpu.argmax(1), cpu.argmax(1))


@pytest.mark.gpu
def test_gpu_bf16_and_compiled_run_commits_without_forgetting(tmp_path: Path) -> None:
    _assert_no_forgetting(_recipe(tmp_path, device="cuda", precision="bf16", compile=True))


@pytest.mark.gpu
def test_deterministic_gpu_runs_write_identical_stores(tmp_path: Path) -> None:
    a = _assert_no_forgetting(_recipe(tmp_path / "a", device="cuda", deterministic=True))
    b = _assert_no_forgetting(_recipe(tmp_path / "b", device="cuda", deterministic=True))
    assert a.path.read_bytes() == b.path.read_bytes()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_cpu_training_keeps_freed_memory_for_reuse() -> None:
    # the setting is process-wide and idempotent; glibc accepts both parameters
    assert keep_freed_memory() is True
