"""What a task's training cost: examples seen and backward FLOPs, counted analytically.

For every Linear / Conv2d the forward of one example runs (masked layers and the task's head),
``macs`` = multiply-accumulates per example (weight entries x output positions). Per trained
example, layer i costs in the backward pass

- its weight gradient, ``2 x macs x f`` when the layer trains (a parameter of it is in the phase
  and requires a gradient), ``f`` = the fraction of weight-gradient entries the plugins leave
  (dynamic gradient masking); 0 when it does not train (frozen, or not in the phase);
- its input gradient, ``2 x macs``, when some layer before it trains (autograd stops below the
  first trainable layer: progressive freezing of the front layers saves exactly this).

Counted densely, as PyTorch runs the masked layers (a weight mask does not skip multiplies), and
with the plugins' sparse weight gradients counted at their kept fraction (what a sparse kernel
would compute; PyTorch's dense kernels do not realise that saving in time). Element-wise terms
(masks, straight-through scores, norms, activations) are not counted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from pipeline.models import ContinualNet

__all__ = ["TrainCost"]


class TrainCost:
    """Examples seen and backward FLOPs of one task's training, summed over its phases."""

    def __init__(self) -> None:
        self.examples = 0
        self.backward_flops = 0.0
        self._layers: list[tuple[str, nn.Module, float]] = []  # forward order
        self._per_example = 0.0

    def probe(self, model: ContinualNet, task: int, x: torch.Tensor) -> None:
        """Record each Linear / Conv2d's MACs per example from one forward of ``x`` (no
        gradient, eval mode: no statistics move)."""
        names = {m: n for n, m in model.named_modules()}
        seen: list[tuple[str, nn.Module, float]] = []

        def hook(m: nn.Module, _args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            w = cast(torch.Tensor, m.weight)
            per_out = out[0].numel() / w.shape[0]  # output positions per example
            seen.append((names[m], m, float(w.numel() * per_out)))

        handles = [m.register_forward_hook(hook) for m in model.modules()
                   if isinstance(m, nn.Linear | nn.Conv2d)]
        was = model.training
        try:
            model.eval()
            with torch.no_grad():
                model(x, task)
        finally:
            model.train(was)
            for h in handles:
                h.remove()
        self._layers = seen

    def begin_epoch(self, trained: set[int], fraction: Callable[[str], float]) -> None:
        """Fix the per-example cost for the coming steps: ``trained`` = ids of the parameters
        the phase trains; ``fraction(name)`` = weight-gradient entries kept for a layer."""
        flops, below = 0.0, False
        for name, m, macs in self._layers:
            trains = any(id(p) in trained and p.requires_grad for p in m.parameters(False))
            if trains:
                flops += 2 * macs * fraction(name)
            if below:
                flops += 2 * macs
            below = below or trains
        self._per_example = flops

    def step(self, batch: int) -> None:
        self.examples += batch
        self.backward_flops += batch * self._per_example

    def stats(self) -> dict[str, float]:
        return {"examples_seen": float(self.examples), "backward_flops": self.backward_flops}
