"""The masked weight of a training step as one autograd node, with fused CPU kernels.

``masked_weight(w, s, density, mask, frozen)`` is ``w * m`` where ``m`` is the top-``density``
of ``|s|`` (straight-through to the scores), or the given boolean ``mask``, or 1; in backward
the weight's gradient is zero at ``frozen`` positions (those earlier tasks hold). It replaces
half a dozen torch ops per layer and step, and a method's gradient gate, each a pass over the
weights: on the CPU the C kernels of ``_native`` do the forward in three passes and the
backward in one, bit-identical to the torch ops (tests/pipeline_tests/test_fused.py).
Elsewhere (CUDA, float64, no C compiler, ``TASKPACK_KERNELS=torch``) the same node runs torch
ops.
"""

from __future__ import annotations

import torch

from pipeline.models._native import fusable, library, ptr
from pipeline.models._topc import ThresholdHint, threshold


class MaskedWeight(torch.autograd.Function):
    """``w * m`` where ``m`` is ``mask`` if given, else ``|s| >= t`` if ``s`` is given (with a
    straight-through gradient to ``s``; ``t`` None keeps every entry), else 1. The gradient of
    ``w`` is zero at ``frozen`` positions."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, s: torch.Tensor | None,
                t: torch.Tensor | None, mask: torch.Tensor | None,
                frozen: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(w, s)
        ctx.t, ctx.mask, ctx.frozen = t, mask, frozen
        lib = library()
        if lib is not None and fusable([w, s], [mask]):
            out = torch.empty_like(w)
            lib.tp_masked_weight(w.data_ptr(), ptr(s), ptr(mask), _t(t), out.data_ptr(),
                                 w.numel(), torch.get_num_threads())
            return out
        return w * _float_mask(s, t, mask, w)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        w, s = ctx.saved_tensors
        t, mask, frozen = ctx.t, ctx.mask, ctx.frozen
        want_w = ctx.needs_input_grad[0]
        want_s = s is not None and mask is None and ctx.needs_input_grad[1]
        g = g.contiguous()
        lib = library()
        if lib is not None and fusable([g, w, s], [mask, frozen]):
            gw = torch.empty_like(w) if want_w else None
            gs = torch.empty_like(w) if want_s else None
            if want_w or want_s:
                lib.tp_masked_grad(g.data_ptr(), w.data_ptr(), ptr(s), ptr(mask),
                                   ptr(frozen), _t(t), ptr(gw), ptr(gs), w.numel(),
                                   torch.get_num_threads())
            return gw, gs, None, None, None
        gw = gs = None
        if want_w:
            gw = g * _float_mask(s, t, mask, w)
            if frozen is not None:
                gw.masked_fill_(frozen, 0.0)
        if want_s:  # straight through |s| >= t, then d|s|/ds = sign(s)
            assert s is not None
            gs = (g * w) * s.sign()
        return gw, gs, None, None, None


def masked_weight(w: torch.Tensor, s: torch.Tensor | None, density: float | None,
                  mask: torch.Tensor | None, frozen: torch.Tensor | None,
                  hint: ThresholdHint | None = None) -> torch.Tensor:
    """The weight a masked layer computes with (see ``MaskedWeight``): the top-``density`` of
    ``|s|`` when ``density`` is given (``hint``: the layer's last threshold), else ``mask``,
    else all of ``w``; ``w``'s gradient is zero at ``frozen``."""
    if density is not None:
        assert s is not None
        return MaskedWeight.apply(w, s, threshold(s, density, hint), None, frozen)
    return MaskedWeight.apply(w, None, None, mask, frozen)


def _t(t: torch.Tensor | None) -> float:
    return 0.0 if t is None else float(t)  # |s| >= 0 keeps every entry


def _float_mask(s: torch.Tensor | None, t: torch.Tensor | None, mask: torch.Tensor | None,
                like: torch.Tensor) -> torch.Tensor:
    if mask is not None:
        return mask.to(like.dtype)
    if s is None or t is None:
        return torch.ones_like(like)
    return (s.detach().abs() >= t).to(like.dtype)
