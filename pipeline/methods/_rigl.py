"""RigL (Evci et al., ICML 2020) as a mask option of the score-masked methods (``mask: rigl``).

The task trains its weights through a fixed-density mask. Every ``interval`` steps, until ``end``
of the phase's planned steps, in every masked layer:

1. **drop** the k own weights (in the mask, held by no earlier task) of smallest magnitude;
2. **regrow** the k free positions (in no earlier task, not in the mask) of largest dense
   gradient magnitude |dL/dW_eff|, with weight 0;

k = f(t) x (own weights in the layer), f(t) = fraction / 2 x (1 + cos(pi t / T_end)), and never
more than the free positions left. Positions earlier tasks hold are never dropped, regrown or
written: shared weights the mask reads stay as they are, so forgetting stays at zero.

The dense gradient is computed only on update steps (RigL's "infrequent dense gradients"): a
forward hook keeps the layer's input and the gradient of its output, and the weight gradient of
the masked-out positions is rebuilt from them (a matmul for Linear, ``conv2d_weight`` for Conv2d).

The mask lives in the layer's scores (mode ``scores``, scores frozen): the update writes 0 into a
dropped position's score and the layer's largest |score| into a regrown one, so the top-c of
|score| is the new mask and the training loop's best-state restore brings back the mask with the
weights it belongs to. Deviations from the paper: the initial mask is the top-c of
Kaiming-uniform scores re-drawn per task (uniform random, not ERK; ExSSNeT starts from its learned
mask); a just-dropped position is not regrown in the same update (RigL may regrow it);
drop/regrow act on own weights only (shared positions stay in the mask); the optimizer's moments
at regrown positions are not reset.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.grad import conv2d_weight

from pipeline.models import ContinualNet, MaskedLayer, topc_mask
from pipeline.recipe import RigLConfig

__all__ = ["RigLMask", "cosine_fraction"]


def cosine_fraction(step: int, fraction: float, end_step: int) -> float:
    """RigL's update fraction at ``step``: ``fraction``, cosine-decayed to 0 at ``end_step``."""
    if step >= end_step:
        return 0.0
    return fraction / 2 * (1 + math.cos(math.pi * step / end_step))


def _dense_grad(layer: nn.Module, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """dL/dW of the weight a Linear or Conv2d ``layer`` applied to input ``x``, given the
    output's gradient ``g``."""
    x, g = x.float(), g.float()
    if isinstance(layer, nn.Conv2d):
        return conv2d_weight(x, layer.weight.shape, g, layer.stride,
                                           layer.padding, layer.dilation, layer.groups)
    return g.reshape(-1, g.shape[-1]).T @ x.reshape(-1, x.shape[-1])


class RigLMask:
    """RigL's drop/regrow schedule over the masked layers of ``model`` (see the module doc)."""

    def __init__(self, model: ContinualNet, cfg: RigLConfig, density: float) -> None:
        self.model, self.cfg, self.density = model, cfg, density
        self.held: dict[str, torch.Tensor] = {}
        self.step, self.end_step = 0, 0
        self.active = False
        self.grads: dict[str, torch.Tensor] = {}
        self.updates, self.swapped = 0, 0
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []

    # ---- the phase ------------------------------------------------------------------------
    @contextmanager
    def phase(self, held: dict[str, torch.Tensor], planned_steps: int) -> Iterator[None]:
        """Rewire during one phase: ``held`` = positions earlier tasks hold (never touched);
        the schedule ends at ``end`` x ``planned_steps``. Scores are frozen meanwhile."""
        layers = self.model.masked_layers()
        self.held, self.step, self.active = held, 0, True
        self.end_step = max(1, math.floor(self.cfg.end * planned_steps))
        scores = [m.score for m in layers.values()]
        was = [s.requires_grad for s in scores]
        for s in scores:
            s.requires_grad_(False)
        self._hooks = [m.register_forward_hook(self._keep(name)) for name, m in layers.items()]
        try:
            yield
        finally:
            for h in self._hooks:
                h.remove()
            self._hooks, self.active, self.grads = [], False, {}
            for s, w in zip(scores, was, strict=True):
                s.requires_grad_(w)

    def plan(self, epochs: int, examples: int, batch_size: int) -> None:
        """Re-plan the schedule once the epoch's example count is known."""
        steps = epochs * math.ceil(examples / batch_size)
        self.end_step = max(1, math.floor(self.cfg.end * steps))

    def _update_due(self) -> bool:
        return self.active and 0 < self.step < self.end_step and self.step % self.cfg.interval == 0

    def _keep(self, name: str):  # noqa: ANN202 - a forward hook
        def hook(layer: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            if not (self._update_due() and torch.is_grad_enabled() and out.requires_grad):
                return
            x = args[0].detach()

            def grad_hook(g: torch.Tensor) -> None:
                self.grads[name] = _dense_grad(layer, x, g.detach())

            out.register_hook(grad_hook)
        return hook

    # ---- the update -----------------------------------------------------------------------
    def after_step(self) -> None:
        """Drop and regrow if this step was an update step; then count it."""
        if self._update_due() and self.grads:
            frac = cosine_fraction(self.step, self.cfg.fraction, self.end_step)
            with torch.no_grad():
                for name, layer in self.model.masked_layers().items():
                    if name in self.grads:
                        self.swapped += self._rewire(layer, self.grads[name], self.held[name],
                                                     frac)
            self.updates += 1
        self.grads = {}
        self.step += 1

    def _rewire(self, layer: MaskedLayer, grad: torch.Tensor, held: torch.Tensor,
                frac: float) -> int:
        score, weight = layer.score, layer.weight
        mask = topc_mask(score, self.density)
        own = mask & ~held
        free = ~mask & ~held
        k = min(math.floor(frac * int(own.sum())), int(free.sum()))
        if k <= 0:
            return 0
        inf = torch.tensor(math.inf, device=weight.device)
        drop = torch.where(own, weight.detach().abs(), inf).flatten().topk(k, largest=False)
        grow = torch.where(free, grad.abs(), -inf).flatten().topk(k).indices
        top = score.detach().abs().max()
        score.view(-1)[drop.indices] = 0.0
        score.view(-1)[grow] = top
        weight.view(-1)[grow] = 0.0  # RigL: new connections start at zero
        return k

    def stats(self) -> dict[str, float]:
        return {"rigl_updates": float(self.updates), "rigl_swapped": float(self.swapped)}

    def reset_stats(self) -> None:
        self.updates, self.swapped = 0, 0
