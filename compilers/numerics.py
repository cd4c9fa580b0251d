"""Check a compiled model against the eager module on fixed inputs.

Relative error is ``max|out - ref| / max|ref|`` over the whole output (normalized by the output's
scale): element-wise relative error is undefined where logits cross zero, and a float32 kernel that
reorders sums legitimately differs by ~1e-6 of the output scale, not of each element.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ._base import CompiledModel
from .errors import NumericsMismatch

__all__ = ["NumericsReport", "check_numerics", "fixed_inputs"]


@dataclass(frozen=True)
class NumericsReport:
    max_abs_err: float
    max_rel_err: float
    rtol: float
    n_inputs: int
    passed: bool

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def fixed_inputs(example_input: torch.Tensor, n_random: int = 1, seed: int = 0) -> list:
    """The example input plus ``n_random`` seeded standard-normal inputs of the same shape."""
    gen = torch.Generator().manual_seed(seed)
    extra = [
        torch.randn(example_input.shape, generator=gen, dtype=example_input.dtype)
        for _ in range(n_random)
    ]
    return [example_input.detach().cpu(), *extra]


@torch.no_grad()
def check_numerics(
    compiled: CompiledModel,
    reference: nn.Module,
    inputs: Sequence[torch.Tensor],
    *,
    rtol: float = 1e-4,
    raise_on_mismatch: bool = True,
) -> NumericsReport:
    """Compare ``compiled.run`` with ``reference`` on ``inputs``; raise when rel error > rtol."""
    if not inputs:
        raise ValueError("check_numerics needs at least one input, but got none.")
    reference = reference.eval()
    max_abs, max_rel = 0.0, 0.0
    for x in inputs:
        ref = reference(x).float()
        out = compiled.run(x).float()
        if out.shape != ref.shape:
            raise NumericsMismatch(
                f"compiled output shape must equal the eager one {tuple(ref.shape)}, but got "
                f"{tuple(out.shape)} ({compiled.backend} on {compiled.target.name})."
            )
        abs_err = float((out - ref).abs().max())
        scale = max(float(ref.abs().max()), 1e-12)
        max_abs, max_rel = max(max_abs, abs_err), max(max_rel, abs_err / scale)
    report = NumericsReport(max_abs, max_rel, rtol, len(inputs), max_rel <= rtol)
    if raise_on_mismatch and not report.passed:
        raise NumericsMismatch(
            f"relative error <= {rtol:g} must hold against eager, but got {max_rel:.3e} "
            f"(max abs {max_abs:.3e}) for {compiled.backend} on {compiled.target.name} "
            f"with transforms={list(compiled.transforms)}."
        )
    return report
