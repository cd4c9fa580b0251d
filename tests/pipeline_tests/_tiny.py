"""Tiny in-code tasks and models for fast unit tests (no data files)."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.data import Split, Task
from pipeline.methods import Method, TaskMasks, build_method
from pipeline.models import ContinualNet, build_model
from pipeline.progress import QUIET
from pipeline.recipe import ModelConfig, Recipe, TrainConfig
from pipeline.session import Session, TaskContext
from pipeline.store import PackedStore
from pipeline.tracking import NoopRun
from pipeline.train import train_task


def tiny_task(index: int, n: int = 96, dim: int = 8, classes: int = 3, seed: int = 0) -> Task:
    """A learnable task: labels from a fixed random linear map of Gaussian inputs."""
    g = torch.Generator().manual_seed(1000 * seed + index)
    proj = torch.randn(dim, classes, generator=g)

    def split(m: int) -> Split:
        x = torch.randn(m, 1, 1, dim, generator=g)
        return Split(x, (x.flatten(1) @ proj).argmax(1))

    return Task(index, f"tiny-{index}", classes, split(n), split(n // 3), split(n // 3))


def tiny_mlp(hidden: tuple[int, ...] = (16, 16), dim: int = 8, norm: str = "none",
             seed: int = 0) -> ContinualNet:
    torch.manual_seed(seed)
    return build_model(ModelConfig(arch="mlp", hidden=list(hidden), norm=norm), (1, 1, dim))


def learn_task(method: Method, task: Task, cfg: TrainConfig) -> TaskMasks:
    """``task`` learned by ``method`` without a store: its head added, begun, trained, ended."""
    method.model.add_task(task.num_classes)
    method.begin_task(task.index, None, task)
    train_task(method, task.index, task, cfg)
    return method.end_task(task.index)


def trained_tiny_session(recipe: Recipe, store_path: Path, run_dir: Path,
                         run: NoopRun | None = None) -> tuple[Session, TaskContext]:
    """Task 0 of a tiny task trained by the recipe's method (2 epochs, lr 0.01), ended, in a
    session over a fresh store: what a ``Compressor`` gets."""
    model = tiny_mlp(hidden=(32, 32))
    method = build_method(model, recipe)
    store = PackedStore.create(store_path, model.layer_shapes(), "tiny", 32)
    task = tiny_task(0, n=192)
    model.add_task(task.num_classes)
    method.begin_task(0, store, task)
    train_task(method, 0, task, recipe.train.model_copy(update={"epochs": 2, "lr": 0.01}))
    s = Session(recipe, None, model, method, tiny_mlp(), store, run_dir)  # type: ignore[arg-type]
    return s, TaskContext(task, method.end_task(0), QUIET, run or NoopRun())
