"""A task's subnetwork as a plain PyTorch module of standard layers (for compilers and export).

The compilers package knows nothing of masked layers, heads or stores: it takes an
``nn.Sequential`` of ``nn.Linear`` / ``nn.Conv2d`` / norms / activations with the task's weights
as dense tensors (zeros where the task's mask is off). The chain is the inference network:
dropout and identity layers are left out, and a per-task BatchNorm (running statistics) right
after a linear or conv is folded into that layer's weight and bias, so the layer, its ReLU and a
max-pool after it meet as the compilers' kernels fuse them. Folding scales each output unit's
weights by one factor: zeros, blocks and dead units stay where they are. Architectures that are
not a plain chain (the reduced ResNet) are wrapped whole with the task fixed; shape transforms
then do not apply.
"""

from __future__ import annotations

import copy
from typing import cast

import torch
from torch import nn

from pipeline.models import ContinualNet, MaskedConv2d, MaskedLinear, TaskBatchNorm


def is_chain(model: ContinualNet) -> bool:
    """Whether :func:`task_module` gives a plain ``nn.Sequential`` (shape transforms apply)."""
    return isinstance(model.backbone, nn.Sequential)


def task_module(model: ContinualNet, snapshot: dict[str, torch.Tensor], task: int) -> nn.Module:
    """The task's network with weights from ``snapshot`` (keyed like the model's state dict),
    on the CPU whatever device the model trains on: compilers take host modules."""
    if is_chain(model):
        return _sequential(model, snapshot, task).cpu().eval()
    return _Fixed(model, snapshot, task).cpu().eval()


def _sequential(model: ContinualNet, snapshot: dict[str, torch.Tensor],
                task: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for name, m in model.backbone.named_children():
        key = f"backbone.{name}"
        if isinstance(m, MaskedLinear):
            lin = nn.Linear(m.in_features, m.out_features, bias=False)
            lin.weight.data.copy_(snapshot[f"{key}.weight"])
            layers.append(lin)
        elif isinstance(m, MaskedConv2d):
            conv = nn.Conv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                             bias=False)
            conv.weight.data.copy_(snapshot[f"{key}.weight"])
            layers.append(conv)
        elif isinstance(m, TaskBatchNorm):
            bn = cast(nn.modules.batchnorm._BatchNorm, copy.deepcopy(m.norms[task]))
            bn.load_state_dict({k.removeprefix(f"{key}.norms.{task}."): v
                                for k, v in snapshot.items()
                                if k.startswith(f"{key}.norms.{task}.")})
            if layers and isinstance(layers[-1], nn.Linear | nn.Conv2d):
                layers[-1] = fold_batchnorm(layers[-1], bn)
            else:
                layers.append(bn)
        elif isinstance(m, nn.Dropout | nn.Identity):
            continue  # identities at inference
        else:
            layers.append(copy.deepcopy(m))
    # per-task heads are nn.Linear; a shared head is a MaskedLinear stored as layer "head"
    head = cast(nn.Linear, model.output_layer(task))
    key = "head" if model.shared_classes is not None else f"heads.{task}"
    out = nn.Linear(head.in_features, head.out_features, bias=head.bias is not None)
    out.weight.data.copy_(snapshot[f"{key}.weight"])
    if head.bias is not None:
        out.bias.data.copy_(snapshot[f"{key}.bias"])
    layers.append(out)
    return nn.Sequential(*layers)


def fold_batchnorm(layer: nn.Linear | nn.Conv2d,
                   bn: nn.modules.batchnorm._BatchNorm) -> nn.Linear | nn.Conv2d:
    """``layer`` followed by ``bn`` in eval mode, as one layer: each output unit's weights times
    gamma / sqrt(var + eps), its bias moved and scaled the same way (a new layer with a bias)."""
    assert bn.running_mean is not None and bn.running_var is not None
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    bias = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(scale)
    shift = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(scale)
    folded = copy.deepcopy(layer)
    if folded.bias is None:
        folded.bias = nn.Parameter(torch.empty(layer.weight.shape[0]))
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    with torch.no_grad():
        folded.weight.copy_(layer.weight.double() * scale.view(shape))
        folded.bias.copy_((bias - bn.running_mean.double()) * scale + shift)
    return folded


class _Fixed(nn.Module):
    """Any ContinualNet with the task and its weights fixed (no shape transforms possible)."""

    def __init__(self, model: ContinualNet, snapshot: dict[str, torch.Tensor], task: int) -> None:
        super().__init__()
        self.net = copy.deepcopy(model)
        self.net.set_mode("dense")
        state = self.net.state_dict()
        state.update({k: v for k, v in snapshot.items() if k in state})
        self.net.load_state_dict(state)
        self.task = task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x, self.task)
