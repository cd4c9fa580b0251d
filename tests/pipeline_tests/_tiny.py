"""Tiny in-code tasks and models for fast unit tests (no data files)."""

from __future__ import annotations

import torch

from pipeline.data import Split, Task
from pipeline.models import ContinualNet, build_model
from pipeline.recipe import ModelConfig


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
