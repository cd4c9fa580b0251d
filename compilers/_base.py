"""The Compiler interface: compile a module for a target, run it, time it.

Backends implement two small abstract classes. ``measure`` and ``check_numerics`` work on any
``CompiledModel`` through ``run`` and ``time_per_run``, so a new backend gets the measurement
protocol and the numerics check for free (and the contract tests in tests/compilers_tests).
Every compile takes one :class:`CompileOptions` value.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .targets import Target
from .transforms import TRANSFORMS, check_transforms

__all__ = ["CompileOptions", "CompiledModel", "Compiler", "DEFAULT_CACHE_DIR", "TRANSFORMS",
           "check_transforms"]

DEFAULT_CACHE_DIR = Path("mlruns/tvm-cache")


@dataclass(frozen=True)
class CompileOptions:
    """How to compile: transforms, tuning budget, cache folder, runtime threads.

    ``transforms`` are validated and put in canonical order. ``threads`` (None: the target's
    ``threads``, and when that is None too the backend's default rule, see ``compilers.threads``)
    is how many threads the compiled model runs with; it is part of what is measured.
    """

    transforms: tuple[str, ...] = ()
    tune_trials: int = 0
    cache_dir: Path | None = None
    threads: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "transforms", check_transforms(tuple(self.transforms)))
        if self.tune_trials < 0:
            raise ValueError(
                f"`tune_trials >= 0` must hold, but got tune_trials={self.tune_trials}.")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"`threads >= 1` must hold (or None), but got {self.threads}.")
        if self.cache_dir is not None:
            object.__setattr__(self, "cache_dir", Path(self.cache_dir))

    def requested_threads(self, target: Target) -> int | None:
        """The explicit thread count: these options', else the target's, else None."""
        return self.threads if self.threads is not None else target.threads


@dataclass
class CompiledModel(abc.ABC):
    """A model compiled for one target and one input shape, run with ``threads`` threads."""

    backend: str
    target: Target
    input_shape: tuple[int, ...]
    transforms: tuple[str, ...] = ()
    tuned: bool = False
    tuning_db_hash: str | None = None
    compiler_version: str = ""
    key: str = ""
    notes: dict[str, object] = field(default_factory=dict)
    threads: int = 1

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
        options: CompileOptions | None = None,
    ) -> CompiledModel:
        """Compile ``module`` for ``target`` at the shape of ``example_input``."""
