"""A task's subnetwork as a plain PyTorch module of standard layers (for compilers and export).

The compilers package knows nothing of masked layers, heads or stores: it takes an
``nn.Sequential`` of ``nn.Linear`` / ``nn.Conv2d`` / norms / activations with the task's weights
as dense tensors (zeros where the task's mask is off). Architectures that are not a plain chain
(the reduced ResNet) are wrapped whole with the task fixed; shape transforms then do not apply.
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
            bn = copy.deepcopy(m.norms[task])
            bn.load_state_dict({k.removeprefix(f"{key}.norms.{task}."): v
                                for k, v in snapshot.items()
                                if k.startswith(f"{key}.norms.{task}.")})
            layers.append(bn)
        elif isinstance(m, nn.Dropout):
            continue  # identity at inference
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
