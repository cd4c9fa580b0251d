"""Models built from masked layers; one head per task."""

from __future__ import annotations

import hashlib
import json

from pipeline.errors import RecipeError
from pipeline.models._archs import ALEXNET_WIDTHS, _flat_size, alexnet, mlp, resnet18, tinynet
from pipeline.models._fused import masked_weight
from pipeline.models._layers import (
    MaskedConv2d,
    MaskedLayer,
    MaskedLinear,
    Mode,
    TaskBatchNorm,
    make_norm,
)
from pipeline.models._native import kernel_name
from pipeline.models._net import ContinualNet
from pipeline.models._topc import kth_largest_radix, kth_smallest, topc_mask
from pipeline.recipe import ModelConfig

__all__ = [
    "ContinualNet",
    "MaskedConv2d",
    "MaskedLayer",
    "MaskedLinear",
    "Mode",
    "TaskBatchNorm",
    "build_model",
    "kernel_name",
    "kth_largest_radix",
    "kth_smallest",
    "make_norm",
    "masked_weight",
    "model_fingerprint",
    "topc_mask",
]


def build_model(cfg: ModelConfig, input_shape: tuple[int, ...],
                num_classes: int | None = None) -> ContinualNet:
    """The recipe's backbone for inputs of ``input_shape`` (C, H, W), with no heads yet.

    ``model.head: shared`` needs ``num_classes`` (every task's class count) for its one output
    layer; per-task heads ignore it.
    """
    if cfg.head == "shared" and num_classes is None:
        raise RecipeError("model.head: shared needs the class count every task shares")
    if cfg.arch == "mlp":
        backbone = mlp(input_shape, cfg.hidden, cfg.norm, cfg.dropout)
    elif cfg.arch == "alexnet":
        backbone = alexnet(input_shape, cfg.norm, cfg.dropout,
                           tuple(cfg.alexnet_widths or ALEXNET_WIDTHS))
    elif cfg.arch == "tinynet":
        backbone = tinynet(input_shape, cfg.norm)
    elif cfg.arch == "resnet18":
        backbone = resnet18(input_shape, cfg.width, cfg.norm)
    else:  # the schema's Literal makes this unreachable for validated recipes
        raise RecipeError(f"model.arch: unknown architecture {cfg.arch!r}")
    shared = cfg.head == "shared"
    if shared and cfg.head_outputs is not None and cfg.head_outputs < (num_classes or 0):
        raise RecipeError(f"model.head_outputs: {cfg.head_outputs} outputs cannot hold the "
                          f"{num_classes} classes of a task")
    return ContinualNet(backbone, _flat_size(backbone, input_shape), cfg.head_bias,
                        num_classes if shared else None, cfg.head_outputs if shared else None)


def model_fingerprint(cfg: ModelConfig, input_shape: tuple[int, ...]) -> str:
    """A short hash naming the architecture; a store records it and refuses another model.

    Fields added later (``head``, ``alexnet_widths``, ``head_outputs``) enter the hash only when
    they are not their default, so stores written before them keep their fingerprint."""
    dump = cfg.model_dump(mode="json")
    if dump.get("head") == "per_task":
        del dump["head"]
    for key in ("alexnet_widths", "head_outputs"):
        if dump.get(key) is None:
            dump.pop(key, None)
    text = json.dumps({"model": dump, "input": list(input_shape)}, sort_keys=True)
    return f"{cfg.arch}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
