"""Unit-level helpers for the methods that reason about neurons (CLNP, NISPA).

A *unit* is an output row of a masked layer (a hidden neuron). Its activation is the output of
the ``nn.ReLU`` that follows the layer in the backbone. Only MLP backbones without normalisation
are supported: there each masked layer is followed by exactly one ReLU, a unit's output depends
only on its incoming links (layers have no bias), and a unit with no incoming link outputs 0.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import RecipeError
from pipeline.models import ContinualNet, MaskedLinear
from pipeline.recipe import Recipe

__all__ = ["check_unit_model", "head_name", "kaiming_fan_out", "mean_activations",
           "relu_after", "source_units", "task_head", "unit_flags"]


def check_unit_model(model: ContinualNet, recipe: Recipe | None, kind: str) -> None:
    """Raise ``RecipeError`` unless the model is an MLP of masked linears with no norm."""
    if recipe is not None:
        if recipe.model.arch != "mlp":
            raise RecipeError(f"model.arch: method {kind!r} supports only 'mlp' (its units are "
                              f"neurons), got {recipe.model.arch!r}")
        if recipe.model.norm != "none":
            raise RecipeError(f"model.norm: method {kind!r} needs 'none' (a normalised unit is "
                              f"not switched off by cutting its links), got "
                              f"{recipe.model.norm!r}")
        if recipe.train.compile:
            raise RecipeError(f"train.compile: method {kind!r} reads unit activations through "
                              "module hooks; set train.compile: false")
    layers = model.masked_layers()
    if not layers or not all(isinstance(m, MaskedLinear) for m in layers.values()):
        raise RecipeError(f"model.arch: method {kind!r} supports only MLP backbones")
    relu_after(model)  # raises when a layer has no ReLU after it


def unit_flags(model: ContinualNet) -> dict[str, torch.Tensor]:
    """One flag per output unit of every masked layer, all False, beside the layer's weight."""
    return {n: torch.zeros(m.weight.shape[0], dtype=torch.bool, device=m.weight.device)
            for n, m in model.masked_layers().items()}


def relu_after(model: ContinualNet) -> dict[str, nn.ReLU]:
    """The ReLU that follows each masked layer, by layer name, in forward order."""
    out: dict[str, nn.ReLU] = {}
    pending: str | None = None
    for name, m in model.backbone.named_modules(prefix="backbone"):
        if isinstance(m, MaskedLinear):
            pending = name
        elif isinstance(m, nn.ReLU) and pending is not None:
            out[pending] = m
            pending = None
    missing = [n for n in model.masked_layers() if n not in out]
    if missing:
        raise RecipeError(f"model: layers {missing} have no ReLU after them")
    return out


def source_units(model: ContinualNet, active: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """For each layer, which of its inputs are active: the previous layer's units (the inputs
    of the first layer always are)."""
    out: dict[str, torch.Tensor] = {}
    prev: torch.Tensor | None = None
    for name, layer in model.masked_layers().items():
        out[name] = (torch.ones(layer.weight.shape[1], dtype=torch.bool,
                                device=layer.weight.device) if prev is None else prev)
        prev = active[name]
    return out


def task_head(model: ContinualNet, task: int) -> nn.Linear:
    """The head of ``task`` (a plain ``nn.Linear``)."""
    head = model.heads[task]
    if not isinstance(head, nn.Linear):
        raise TypeError(f"the head of task {task} is a {type(head).__name__}, not a Linear")
    return head


def head_name(model: ContinualNet) -> str:
    """The masked layer whose units the heads read."""
    return list(model.masked_layers())[-1]


@torch.no_grad()
def mean_activations(model: ContinualNet, task: int, x: torch.Tensor,
                     batch_size: int) -> dict[str, torch.Tensor]:
    """Mean post-ReLU output of every unit over ``x``, by layer, with the model as it runs now
    (eval mode: no dropout)."""
    sums: dict[str, torch.Tensor] = {}
    handles = []
    for name, relu in relu_after(model).items():
        def hook(_m: nn.Module, _i: object, out: torch.Tensor, name: str = name) -> None:
            s = out.detach().double().sum(0)
            sums[name] = sums[name] + s if name in sums else s
        handles.append(relu.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size], task)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return {n: (s / max(len(x), 1)).float() for n, s in sums.items()}


def kaiming_fan_out(shape: torch.Size, gen: torch.Generator) -> torch.Tensor:
    """Kaiming-normal values (fan-out, ReLU gain) for a linear weight of ``shape``, on the CPU
    from ``gen`` (the same values whatever the training device)."""
    return torch.randn(shape, generator=gen) * (2.0 / shape[0]) ** 0.5
