"""The ``int8`` transform: weight-only int8 for linear layers (activations stay fp32).

Every ``nn.Linear`` anywhere in the module becomes an :class:`~compilers.int8_ops.Int8Linear`:
per-output-row symmetric scales (``max|row| / 127``), zero point 0, codes in [-127, 127]. Inside an
``nn.Sequential`` a ReLU right after the linear is fused into it. The TVM backend lowers each one
to a TIR kernel that reads the int8 weight (4x fewer bytes than fp32; batch 1 is memory bound) and
converts it to fp32 in registers; see ``compilers.tvm.kernels.int8``.

Block-sparse layers (``block_sparse`` runs first) keep their BSR kernel with int8 block data and
per-row scales. What stays fp32: convolutions, block-sparse ones included (no int8 conv kernel
here; docs/compilers.md records int8 conv slower than fp32 on this CPU; and the eager int8
reference keeps convs fp32, so an int8 BSR conv would break "eager int8 == TVM int8") and all
activations (int8 activations are not implemented).

The int8 model is *not* numerically the original one: the compile check compares the build with
the quantized module in eager (tolerance unchanged), and the quantization error against the
original is recorded separately (``CompiledModel.notes["int8_error"]``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..ops.int8 import Int8Linear
from ..ops.sparse import BlockSparseLinear

__all__ = ["dequantize_int8", "quantization_error", "to_int8"]

logger = logging.getLogger(__name__)


def _replace_linears(
    module: nn.Module, make: Callable[[nn.Linear, bool], nn.Module], for_kernels: bool
) -> int:
    """Swap every ``nn.Linear`` below ``module`` (in place) for ``make(linear, relu)``.

    ``for_kernels`` (the TVM build): a ReLU right after a linear in an ``nn.Sequential`` is
    absorbed (``relu=True``) and block-sparse layers get int8 block data. Otherwise ReLUs stay
    (``relu`` is False) and block-sparse layers are untouched. Returns how many layers changed.
    """
    count = 0
    children = list(module.named_children())
    replaced: dict[str, nn.Module | None] = {}  # None: drop (a ReLU fused into its linear)
    for i, (name, child) in enumerate(children):
        if name in replaced:
            continue
        if isinstance(child, BlockSparseLinear) and for_kernels:
            replaced[name] = child.to_int8()
        elif isinstance(child, nn.Linear):
            nxt = children[i + 1][1] if i + 1 < len(children) else None
            relu = for_kernels and isinstance(module, nn.Sequential) and isinstance(nxt, nn.ReLU)
            replaced[name] = make(child, relu)
            if relu:
                replaced[children[i + 1][0]] = None
        else:
            count += _replace_linears(child, make, for_kernels)
            continue
        count += 1
    if isinstance(module, nn.Sequential) and None in replaced.values():
        kept = [new for n, c in children if (new := replaced.get(n, c)) is not None]
        for name, _ in children:
            del module._modules[name]
        for j, new in enumerate(kept):
            module.add_module(str(j), new)
    else:
        for name, new_child in replaced.items():
            setattr(module, name, new_child)
    return count


def to_int8(module: nn.Module) -> nn.Module:
    """A copy of ``module`` with every ``nn.Linear`` replaced by :class:`Int8Linear`.

    Block-sparse layers get int8 block data (:meth:`BlockSparseLinear.to_int8`); a top-level
    ``nn.Linear`` is wrapped; convolutions and everything else are left as they are (fp32).
    """
    model = copy.deepcopy(module).eval()
    if isinstance(model, nn.Linear):
        return Int8Linear(model).eval()
    n = _replace_linears(model, Int8Linear, for_kernels=True)
    logger.debug("int8: %d linear layers quantized", n)
    return model.eval()


def dequantize_int8(module: nn.Module) -> nn.Module:
    """``to_int8`` then back to plain fp32 ``nn.Linear`` layers holding the dequantized weights.

    The eager backend runs this: dense fp32 kernels, numerically the int8 model.
    """
    if isinstance(module, nn.Linear):
        return Int8Linear(module).dequantized().eval()
    model = copy.deepcopy(module).eval()
    _replace_linears(model, lambda linear, _: Int8Linear(linear).dequantized(), for_kernels=False)
    return model.eval()


@torch.no_grad()
def quantization_error(
    original: nn.Module, quantized: nn.Module, inputs: Sequence[torch.Tensor]
) -> dict[str, float]:
    """Max abs / relative output error of ``quantized`` against ``original`` on ``inputs``.

    Same definition as the compile check (``compilers.numerics``: max|out - ref| / max|ref|), but
    only recorded: it is the accuracy cost of int8, for the caller's accuracy check to judge, not
    a build error. Computed in eager on both modules (no backend involved).
    """
    original, quantized = original.eval(), quantized.eval()
    max_abs, max_rel = 0.0, 0.0
    for x in inputs:
        ref, out = original(x).float(), quantized(x).float()
        abs_err = float((out - ref).abs().max())
        max_abs = max(max_abs, abs_err)
        max_rel = max(max_rel, abs_err / max(float(ref.abs().max()), 1e-12))
    return {"max_abs_err": max_abs, "max_rel_err": max_rel}
