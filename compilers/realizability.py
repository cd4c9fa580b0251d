"""Which compression choices turn into speed on which target (docs/compilers.md), for the search.

``speed-realizable``: a kernel or shape change in this package makes the layer faster on the
target. ``storage-only``: the choice saves bytes in the store but runs as dense fp32 there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from .targets import Target
from .transforms import BLOCK_SHAPES, MAX_BLOCK_DENSITY, MAX_CSR_DENSITY

__all__ = ["LayerSpec", "Realizability", "layer_realizability"]

Realizability = Literal["speed-realizable", "storage-only"]


@dataclass(frozen=True)
class LayerSpec:
    """What the search decided for one layer: kind, sparsity, pattern and bit-width."""

    kind: Literal["linear", "conv2d"]
    out_features: int
    in_features: int
    sparsity: float
    pattern: Literal["unstructured", "nm", "block", "channel"]  # parsed by the caller
    block: tuple[int, int] | None = None  # (h, w) of a ``block`` pattern
    bits: int = 32
    groups: int = 1  # conv2d: the block-sparse conv kernel runs groups 1 only


def layer_realizability(spec: LayerSpec, target: Target,
                        transforms: Sequence[str] = ("shrink", "block_sparse")) -> Realizability:
    """``speed-realizable`` when one of ``transforms`` speeds the layer up on ``target``.

    ``transforms`` are the target's compile-time transforms (a recipe target's ``transforms``).
    """
    cpu = target.arch in ("host", "aarch64")
    if "int8" in transforms and spec.kind == "linear" and cpu and spec.bits <= 8:
        return "speed-realizable"  # the int8 weight kernel reads 4x fewer bytes than fp32
    if spec.pattern == "channel" and spec.sparsity > 0 and "shrink" in transforms:
        return "speed-realizable"  # shrink removes the channels on every backend
    block = spec.block if spec.pattern == "block" else None
    # conv2d: ``in_features`` is C*kh*kw (the weight viewed as (O, C*kh*kw), as the kernel sees
    # it; C alone also works for the 16x1 / 8x1 / 4x1 blocks, which need O % bh == 0 only).
    if (
        "block_sparse" in transforms
        and block in BLOCK_SHAPES
        and spec.kind in ("linear", "conv2d")
        and spec.groups == 1
        and cpu
        and 1 - spec.sparsity <= MAX_BLOCK_DENSITY
        and spec.out_features % block[0] == 0
        and spec.in_features % block[1] == 0
    ):
        return "speed-realizable"  # the TIR block-sparse kernels (linear and conv; CPU only)
    if (
        "csr_sparse" in transforms
        and spec.kind == "linear"
        and spec.pattern in ("unstructured", "nm")
        and cpu
        and 1 - spec.sparsity <= MAX_CSR_DENSITY
    ):
        return "speed-realizable"  # the TIR CSR kernel (linear layers, CPU only)
    # unstructured / n:m without csr_sparse (or too dense, or conv) / bits without int8 /
    # conv int8: no kernel
    return "storage-only"
