"""The ``shrink`` transform: remove output units that are zero for every input.

Removes output units (neurons / channels) that are identically zero for the task and the matching
inputs of their consumer, so every backend sees smaller shapes. Works on ``nn.Sequential`` models
of standard layers; anything else is returned unchanged (dense compile), never rejected.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from ._block_sparse import _block_shape, _flatten

__all__ = ["shrink"]

logger = logging.getLogger(__name__)

_PASS_THROUGH = (nn.ReLU, nn.Dropout, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Identity)



def _bn_constant_output(bn: nn.modules.batchnorm._BatchNorm, value: torch.Tensor) -> torch.Tensor:
    """Per channel: what the BN layer outputs (in eval) when input channel c is the constant
    ``value[c]`` everywhere."""
    with torch.no_grad():
        mean, var = bn.running_mean, bn.running_var  # both None, or both set (_NormBase)
        if bn.track_running_stats and mean is not None and var is not None:
            out = (value - mean) / torch.sqrt(var + bn.eps)
        else:  # batch statistics of a constant channel: mean = the constant, var 0: output 0
            out = torch.zeros(bn.num_features)
        if bn.affine:
            out = out * bn.weight + bn.bias
    return out


def _slice_bn(bn: nn.modules.batchnorm._BatchNorm, keep: torch.Tensor) -> nn.Module:
    new = type(bn)(
        int(keep.numel()), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
        track_running_stats=bn.track_running_stats,
    )
    with torch.no_grad():
        if bn.affine:
            new.weight.copy_(bn.weight[keep])
            new.bias.copy_(bn.bias[keep])
        mean, var, batches = bn.running_mean, bn.running_var, bn.num_batches_tracked
        if bn.track_running_stats and mean is not None:
            # set together with running_mean, in bn and in new (same track_running_stats)
            assert var is not None and batches is not None
            assert new.running_mean is not None and new.running_var is not None
            assert new.num_batches_tracked is not None
            new.running_mean.copy_(mean[keep])
            new.running_var.copy_(var[keep])
            new.num_batches_tracked.copy_(batches)
    return new.eval()


def _conv_like(layer: nn.Conv2d, in_channels: int, out_channels: int) -> nn.Conv2d:
    """A new ``nn.Conv2d`` with ``layer``'s hyper-parameters and the given channel counts."""
    (kh, kw), (sh, sw), (dh, dw) = layer.kernel_size, layer.stride, layer.dilation
    padding = layer.padding if isinstance(layer.padding, str) else (
        layer.padding[0], layer.padding[1])
    return nn.Conv2d(
        in_channels, out_channels, (kh, kw), (sh, sw), padding, (dh, dw), layer.groups,
        layer.bias is not None, layer.padding_mode,
    )


def _slice_producer(layer: nn.Linear | nn.Conv2d, keep: torch.Tensor) -> nn.Module:
    new: nn.Linear | nn.Conv2d
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            new = nn.Linear(layer.in_features, int(keep.numel()), bias=layer.bias is not None)
        else:
            new = _conv_like(layer, layer.in_channels, int(keep.numel()))
        new.weight.copy_(layer.weight[keep])
        if layer.bias is not None and new.bias is not None:  # new has a bias iff layer has
            new.bias.copy_(layer.bias[keep])
    return new


def _slice_consumer(
    layer: nn.Linear | nn.Conv2d, keep: torch.Tensor, spatial: int
) -> nn.Module:
    new: nn.Linear | nn.Conv2d
    with torch.no_grad():
        if isinstance(layer, nn.Linear):
            cols = (keep[:, None] * spatial + torch.arange(spatial)[None, :]).reshape(-1)
            new = nn.Linear(int(cols.numel()), layer.out_features, bias=layer.bias is not None)
            new.weight.copy_(layer.weight[:, cols])
        else:
            new = _conv_like(layer, int(keep.numel()), layer.out_channels)
            new.weight.copy_(layer.weight[:, keep])
        if layer.bias is not None and new.bias is not None:  # new has a bias iff layer has
            new.bias.copy_(layer.bias)
    return new


def shrink(module: nn.Module, *, keep_blocks: bool = False) -> nn.Module:
    """Remove output units that are constant for every input, with their consumers' inputs.

    A unit is *dead* when its weight row (filter) is all zero: it outputs its bias everywhere, and
    every layer up to the next Linear/Conv2d maps a constant channel to a constant (ReLU,
    Dropout, max pooling, BatchNorm in eval, Flatten). A dead unit whose constant reaches the
    consumer as 0 is removed with the consumer's inputs from it; one whose constant is c != 0
    (a per-task BatchNorm's shift, a bias) is removed too, its contribution c x (the consumer's
    weights on it) folded into the consumer's bias, when that is exact: a Linear consumer, or a
    Conv2d consumer without padding (zero padding would see a border that is not c). The head
    (last Linear) keeps its outputs.

    ``keep_blocks`` (used when ``to_block_sparse`` runs next): removing rows of a block-sparse
    layer shifts its block grid (and leaves shapes like 397 that no block divides), which turned
    fast block-sparse layers dense. Such a layer keeps its shape instead: its dead units are
    already empty blocks, and the consumer's inputs from them are zeroed rather than removed
    (the same output, since those inputs are exactly 0), so the consumer's blocks get sparser.
    The same holds when the consumer's own block grid is more than one column wide.
    """
    layers = _flatten(module)
    if layers is None:
        logger.info("shrink skipped: %s is not an nn.Sequential", type(module).__name__)
        return module
    layers = [copy.deepcopy(layer) for layer in layers]
    removed = 0
    for i, layer in enumerate(layers):
        if not isinstance(layer, nn.Linear | nn.Conv2d) or getattr(layer, "groups", 1) != 1:
            continue
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        zero = (w == 0).all(dim=1)  # dead units: each outputs its constant ``value``
        value = (torch.zeros(zero.numel()) if layer.bias is None
                 else layer.bias.detach().clone())
        j, spatial, ok = i + 1, 1, True
        while j < len(layers) and not isinstance(layers[j], nn.Linear | nn.Conv2d):
            mid = layers[j]
            if isinstance(mid, nn.modules.batchnorm._BatchNorm):
                value = _bn_constant_output(mid, value)
            elif isinstance(mid, nn.ReLU):
                value = torch.relu(value)
            elif isinstance(mid, nn.Flatten):
                spatial = -1  # resolved from the consumer's in_features below
            elif not isinstance(mid, _PASS_THROUGH):
                ok = False
            j += 1
        if not ok or j == len(layers):
            continue
        consumer = layers[j]
        assert isinstance(consumer, nn.Linear | nn.Conv2d)  # where the while loop above stopped
        if _padded(consumer):
            zero &= value == 0  # a padded consumer: only units that are 0 can go
        if not bool(zero.any()) or bool(zero.all()):
            continue
        if isinstance(consumer, nn.Conv2d) and (spatial != 1 or consumer.groups != 1):
            continue
        n_out = zero.numel()
        if spatial == -1:
            if not isinstance(consumer, nn.Linear) or consumer.in_features % n_out:
                continue
            spatial = consumer.in_features // n_out
        elif isinstance(consumer, nn.Linear) and consumer.in_features != n_out:
            continue
        consumer = _fold_constants(consumer, torch.where(zero, value, 0.0), spatial)
        if keep_blocks and (_block_shape(layer) is not None
                            or (_block_shape(consumer) or (1, 1))[1] > 1):
            layers[j] = _zero_consumer_inputs(consumer, zero, spatial)
            continue
        keep = torch.nonzero(~zero).reshape(-1)
        layers[i] = _slice_producer(layer, keep)
        for k in range(i + 1, j):
            mid = layers[k]
            if isinstance(mid, nn.modules.batchnorm._BatchNorm):
                layers[k] = _slice_bn(mid, keep)
        layers[j] = _slice_consumer(consumer, keep, spatial)
        removed += int(zero.sum())
    logger.debug("shrink removed %d units", removed)
    return nn.Sequential(*layers).eval()


def _zero_consumer_inputs(
    layer: nn.Linear | nn.Conv2d, zero: torch.Tensor, spatial: int
) -> nn.Module:
    """``layer`` with the weights reading the units in ``zero`` set to 0 (shapes unchanged)."""
    new = copy.deepcopy(layer)
    with torch.no_grad():
        if isinstance(new, nn.Linear):
            new.weight[:, zero.repeat_interleave(spatial)] = 0
        else:
            new.weight[:, zero] = 0
    return new


def _padded(layer: nn.Module) -> bool:
    """Whether ``layer`` is a conv that pads its input."""
    if not isinstance(layer, nn.Conv2d):
        return False
    if isinstance(layer.padding, str):
        return layer.padding != "valid"
    return any(p != 0 for p in layer.padding)


def _fold_constants(
    layer: nn.Linear | nn.Conv2d, value: torch.Tensor, spatial: int
) -> nn.Linear | nn.Conv2d:
    """``layer`` with the contribution of input channels that are the constant ``value[c]``
    (0 for the others) added to its bias (a bias is created when it has none)."""
    if not bool(value.any()):
        return layer
    new = copy.deepcopy(layer)
    with torch.no_grad():
        if isinstance(new, nn.Linear):
            contribution = new.weight @ value.repeat_interleave(spatial)
        else:  # unpadded: every output position sees value[c] under the whole kernel
            contribution = (new.weight.sum(dim=(2, 3)) * value).sum(dim=1)
        if new.bias is None:
            new.bias = nn.Parameter(contribution.clone())
        else:
            new.bias.add_(contribution)
    return new
