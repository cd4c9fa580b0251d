"""The eager PyTorch backend: the numerical reference and the baseline every figure compares to.

It prepares the module with the same :func:`~compilers.transforms.apply_transforms` as the TVM
backend, in the reference form (``kernels=False``): shrink removes the same units (and keeps the
same block-sparse shapes), block-sparse layers run dense (exact), and int8 linears run dense fp32
on the *dequantized* int8 weights, so eager with int8 computes what the TVM int8 build computes
(its accuracy, not its speed). It runs with ``threads`` torch threads (set around each call).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import nn

from ._base import CompiledModel, CompileOptions, Compiler
from .errors import TargetUnavailable
from .hashing import compile_key
from .targets import Target
from .threads import all_cores, default_threads, torch_threads
from .transforms import apply_transforms

__all__ = ["EagerCompiler", "EagerModel"]


@dataclass
class EagerModel(CompiledModel):
    module: nn.Module | None = None

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        assert self.module is not None
        with torch_threads(self.threads):
            return self.module(x)

    @torch.no_grad()
    def time_per_run(self, x: torch.Tensor, number: int) -> float:
        assert self.module is not None
        with torch_threads(self.threads):
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
        options: CompileOptions | None = None,
    ) -> EagerModel:
        options = options or CompileOptions()
        if target.kind != "host":
            raise TargetUnavailable(
                f"the eager backend runs on the host only, but target {target.name!r} has "
                f"kind={target.kind!r}."
            )
        threads = (options.requested_threads(target) or default_threads(example_input)
                   or all_cores())
        return EagerModel(
            backend=self.name,
            target=target,
            input_shape=tuple(example_input.shape),
            transforms=options.transforms,
            compiler_version=f"torch-{torch.__version__}",
            key=compile_key(module, example_input, target, options.transforms,
                            backend=self.name, threads=threads),
            threads=threads,
            module=apply_transforms(module, options.transforms, kernels=False),
        )
