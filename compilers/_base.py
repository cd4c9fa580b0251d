"""The Compiler interface: compile a module for a target, run it, time it.

Backends implement two small abstract classes. ``measure`` and ``check_numerics`` work on any
``CompiledModel`` through ``run`` and ``time_per_run``, so a new backend gets the measurement
protocol and the numerics check for free (and the contract tests in tests/compilers_tests).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .targets import Target

__all__ = ["Compiler", "CompiledModel", "TRANSFORMS", "Transform", "check_transforms"]

Transform = Literal["shrink", "block_sparse", "int8"]
TRANSFORMS: tuple[str, ...] = ("shrink", "block_sparse", "int8")
DEFAULT_CACHE_DIR = Path("mlruns/tvm-cache")


def check_transforms(transforms: Sequence[str]) -> tuple[str, ...]:
    unknown = [t for t in transforms if t not in TRANSFORMS]
    if unknown:
        raise ValueError(f"transforms must be a subset of {TRANSFORMS}, but got {unknown}.")
    return tuple(t for t in TRANSFORMS if t in transforms)  # canonical order for hashing


@dataclass
class CompiledModel(abc.ABC):
    """A model compiled for one target and one input shape."""

    backend: str
    target: Target
    input_shape: tuple[int, ...]
    transforms: tuple[str, ...] = ()
    tuned: bool = False
    tuning_db_hash: str | None = None
    compiler_version: str = ""
    key: str = ""
    notes: dict[str, object] = field(default_factory=dict)

    @abc.abstractmethod
    def run(self, x: torch.Tensor) -> torch.Tensor:
        """Run on one input batch (shape ``input_shape``) and return the output as a CPU tensor."""

    @abc.abstractmethod
    def time_per_run(self, x: torch.Tensor, number: int) -> float:
        """Seconds per run, averaged over ``number`` back-to-back runs (one timing sample)."""

    def export(self, folder: Path) -> dict[str, str]:  # pragma: no cover - default hook
        """Write the deployable artifact(s) to ``folder``; returns {role: file name}."""
        return {}


class Compiler(abc.ABC):
    """A backend that turns an ``nn.Module`` + example input into a ``CompiledModel``."""

    name: str = ""

    @abc.abstractmethod
    def compile(
        self,
        module: nn.Module,
        example_input: torch.Tensor,
        target: Target,
        *,
        transforms: Sequence[str] = (),
        tune_trials: int = 0,
        cache_dir: str | Path | None = None,
    ) -> CompiledModel:
        """Compile ``module`` for ``target`` at the shape of ``example_input``."""
