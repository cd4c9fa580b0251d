"""The eager PyTorch backend: the numerical reference and the baseline every figure compares to.

It applies the same torch-level transforms as the TVM backend (shrink removes the same units), so
"eager with shrink" is a fair baseline. Block-sparse has no eager kernel and runs dense (exact).
int8 has no eager kernel either: linear layers run dense fp32 on the *dequantized* int8 weights, so
eager with int8 computes what the TVM int8 build computes (its accuracy, not its speed).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ._base import CompiledModel, Compiler, check_transforms
from .errors import TargetUnavailable
from .hashing import compile_key
from .quantize import dequantize_int8
from .targets import Target
from .transforms import shrink

__all__ = ["EagerCompiler", "EagerModel"]


@dataclass
class EagerModel(CompiledModel):
    module: nn.Module | None = None

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        assert self.module is not None
        return self.module(x)

    @torch.no_grad()
    def time_per_run(self, x: torch.Tensor, number: int) -> float:
        assert self.module is not None
        start = time.perf_counter()
        for _ in range(number):
            self.module(x)
        return (time.perf_counter() - start) / number


class EagerCompiler(Compiler):
    name = "eager"

    def compile(
        self,
        module: nn.Module,
        example_input: torch.Tensor,
        target: Target,
        *,
        transforms: Sequence[str] = (),
        tune_trials: int = 0,
        cache_dir: str | Path | None = None,
    ) -> EagerModel:
        if target.kind != "host":
            raise TargetUnavailable(
                f"the eager backend runs on the host only, but target {target.name!r} has "
                f"kind={target.kind!r}."
            )
        transforms = check_transforms(transforms)
        model = copy.deepcopy(module).eval()
        if "shrink" in transforms:
            model = shrink(model)
        if "int8" in transforms:
            model = dequantize_int8(model)
        return EagerModel(
            backend=self.name,
            target=target,
            input_shape=tuple(example_input.shape),
            transforms=transforms,
            compiler_version=f"torch-{torch.__version__}",
            key=compile_key(module, example_input, target, transforms, backend=self.name),
            module=model,
        )
