"""Backbones from the WSN/TSN papers, built from masked layers (docs/methods.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.models._layers import MaskedConv2d, MaskedLinear, make_norm


def mlp(input_shape: tuple[int, ...], hidden: list[int], norm: str, dropout: float) -> nn.Module:
    """Flatten -> [Linear, norm, ReLU, dropout] per hidden width (PMNIST: 784-2000-2000)."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = int(torch.tensor(input_shape).prod())
    for h in hidden:
        layers += [MaskedLinear(width, h), make_norm(norm, h, 1), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    return nn.Sequential(*layers)


ALEXNET_WIDTHS = (64, 128, 256, 2048, 2048)


def alexnet(input_shape: tuple[int, ...], norm: str, dropout: float,
            widths: tuple[int, ...] = ALEXNET_WIDTHS) -> nn.Module:
    """AlexNet-like net for Split CIFAR-100: 3 convs (64/128/256, k 4/3/2) + fc 2048-2048.

    Dropout 0.2/0.2/0.5 after the convs and 0.5 after the fcs as in WSN, scaled off when the recipe
    sets ``dropout: 0`` (``dropout`` > 0 turns the paper's schedule on). ``widths`` (the convs'
    channels, then the fcs' widths) narrows the net for small CPU budgets; the default is WSN's.
    """
    c = input_shape[0]
    drops = (0.2, 0.2, 0.5, 0.5, 0.5) if dropout > 0 else (0.0,) * 5
    convs = zip((c, *widths[:2]), widths[:3], (4, 3, 2), strict=True)
    layers: list[nn.Module] = []
    for (cin, cout, k), p in zip(convs, drops, strict=False):
        layers += [MaskedConv2d(cin, cout, k), make_norm(norm, cout, 2), nn.ReLU()]
        layers += [nn.Dropout(p), nn.MaxPool2d(2)] if p > 0 else [nn.MaxPool2d(2)]
    layers.append(nn.Flatten())
    width = _flat_size(nn.Sequential(*layers), input_shape)
    for fc, p in zip(widths[3:], drops[3:], strict=True):
        layers += [MaskedLinear(width, fc), make_norm(norm, fc, 1), nn.ReLU()]
        if p > 0:
            layers.append(nn.Dropout(p))
        width = fc
    return nn.Sequential(*layers)


def tinynet(input_shape: tuple[int, ...], norm: str) -> nn.Module:
    """TinyNet for TinyImageNet: 4 x conv3x3 stride 2 (160 ch), fc 640-640; BN after conv3,
    conv4, fc1, fc2 only."""
    c = input_shape[0]
    layers: list[nn.Module] = []
    for i, cin in enumerate((c, 160, 160, 160)):
        layers += [MaskedConv2d(cin, 160, 3, stride=2, padding=1)]
        layers += [make_norm(norm, 160, 2)] if i >= 2 else []
        layers.append(nn.ReLU())
    layers.append(nn.Flatten())
    width = _flat_size(nn.Sequential(*layers), input_shape)
    for _ in range(2):
        layers += [MaskedLinear(width, 640), make_norm(norm, 640, 1), nn.ReLU()]
        width = 640
    return nn.Sequential(*layers)


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = MaskedConv2d(cin, cout, 3, stride=stride, padding=1)
        self.bn1 = make_norm(norm, cout, 2)
        self.conv2 = MaskedConv2d(cout, cout, 3, stride=1, padding=1)
        self.bn2 = make_norm(norm, cout, 2)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            # WSN masks the 1x1 shortcut convs too.
            self.shortcut = nn.Sequential(MaskedConv2d(cin, cout, 1, stride=stride),
                                          make_norm(norm, cout, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class _ResNet(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], width: int, norm: str) -> None:
        super().__init__()
        self.conv1 = MaskedConv2d(input_shape[0], width, 3, stride=1, padding=1)
        self.bn1 = make_norm(norm, width, 2)
        blocks: list[nn.Module] = []
        cin = width
        for i, mult in enumerate((1, 2, 4, 8)):
            for j in range(2):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(_BasicBlock(cin, width * mult, stride, norm))
                cin = width * mult
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.bn1(self.conv1(x))))
        # avg-pool 2 as in the reduced ResNet-18 of GPM/WSN: 32x32 input -> 160 x 2 x 2 = 640.
        return torch.flatten(F.avg_pool2d(out, 2), 1)


def resnet18(input_shape: tuple[int, ...], width: int, norm: str) -> nn.Module:
    """Reduced ResNet-18 (base width 20 -> 20/40/80/160 channels) for 5-datasets."""
    return _ResNet(input_shape, width, norm)


def _flat_size(features: nn.Module, input_shape: tuple[int, ...]) -> int:
    with torch.no_grad():
        was = features.training
        features.eval()
        out = features(torch.zeros(2, *input_shape))
        features.train(was)
    return int(out.shape[1])
