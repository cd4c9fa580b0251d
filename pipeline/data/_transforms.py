"""uint8 images to float tensors, per stream: scale, permute, rotate, pad, normalize.

Transforms run in ``Stream.load`` on the examples a task keeps. MNIST-family streams stay in
[0, 1] (the usual input of the MLPs they are learned with) unless ``benchmark.normalize`` asks
for standardization (``standardized``: WSN and GPM feed PMNIST this way); colour data sets and
everything in 5-datasets are normalized per channel with each data set's published training-set
statistics, so the values do not depend on which subset was loaded.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data._types import Transform

# Per-channel (mean, std) of each training set, in [0, 1] units, as commonly published.
STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "notmnist": ((0.4254,), (0.4586,)),
    "tinyimagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
}


# Preprocessing as data (``TaskSpec.preprocess``, bundle manifests): the steps the transforms
# below apply, in order, to uint8 images [N, C, H, W], so a deployment can repeat them exactly.
SCALE_STEP: dict = {"op": "scale", "divide_by": 255.0,
                    "doc": "uint8 pixels to float32 in [0, 1]: x / 255"}


PAD_STEP: dict = {"op": "pad", "doc": "zero-pad the uint8 image to a centred square of this size"}


def unit_steps() -> list[dict]:
    return [dict(SCALE_STEP)]


def permuted_steps(perm: np.ndarray) -> list[dict]:
    return [dict(SCALE_STEP), {
        "op": "permute_pixels", "permutation": [int(i) for i in perm],
        "doc": "x.reshape(N, -1)[:, permutation].reshape(N, C, H, W)"}]


def rotated_steps(degrees: float) -> list[dict]:
    return [dict(SCALE_STEP), {
        "op": "rotate", "degrees": float(degrees),
        "doc": "counter-clockwise about the centre, bilinear, zeros outside (torch "
               "affine_grid + grid_sample, align_corners=False)"}]


def normalized_steps(dataset: str, pad_to: int | None = None,
                     channels: int | None = None) -> list[dict]:
    mean, std = STATS[dataset]
    steps: list[dict] = []
    if pad_to is not None:
        steps.append({**PAD_STEP, "to": pad_to})
    steps += [dict(SCALE_STEP), {"op": "normalize", "mean": list(mean), "std": list(std),
                                 "doc": "per channel: (x - mean) / std"}]
    if channels is not None:
        steps.append({"op": "repeat_channels", "to": channels,
                      "doc": "a 1-channel image repeated to this many channels"})
    return steps


def standardized_steps(dataset: str) -> list[dict]:
    (mean,), (std,) = STATS[dataset]
    return [{"op": "normalize", "mean": [mean], "std": [std],
             "doc": "per channel: (x - mean) / std"}]


def to_unit(x: np.ndarray) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` to float32 in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(255.0)


def standardized(dataset: str, transform: Transform = to_unit) -> Transform:
    """``transform`` (which yields [0, 1] images), then ``(x - mean) / std`` with the data set's
    published statistics. Per-pixel scalars, so standardizing before or after a pixel permutation
    gives the same tensor; after a rotation the zero border becomes ``-mean / std`` like the
    original background."""
    (mean,), (std,) = STATS[dataset]

    def apply(x: np.ndarray) -> torch.Tensor:
        return transform(x).sub_(mean).div_(std)

    return apply


def pad_square(x: np.ndarray, size: int) -> np.ndarray:
    """uint8 ``[N, C, H, W]`` zero-padded (centred) to ``size`` x ``size``; black border."""
    ph, pw = size - x.shape[-2], size - x.shape[-1]
    if ph == pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)))


def padded(transform: Transform, size: int | None) -> Transform:
    """``transform`` applied to the images zero-padded to ``size`` (itself when None)."""
    if size is None:
        return transform

    def apply(x: np.ndarray) -> torch.Tensor:
        return transform(pad_square(x, size))

    return apply


def permuted(perm: np.ndarray) -> Transform:
    """Shuffle the pixels of every image with the same permutation ``perm`` of ``C*H*W``."""

    def apply(x: np.ndarray) -> torch.Tensor:
        return to_unit(x.reshape(len(x), -1)[:, perm].reshape(x.shape))

    return apply


def rotated(degrees: float) -> Transform:
    """Rotate counter-clockwise by ``degrees`` about the centre (bilinear, zeros outside)."""

    def apply(x: np.ndarray) -> torch.Tensor:
        return rotate(to_unit(x), degrees)

    return apply


def rotate(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Counter-clockwise rotation of square images ``[N, C, H, W]``, in pure torch."""
    if degrees % 360 == 0 or len(x) == 0:
        return x
    a = math.radians(degrees)
    # affine_grid maps each output location to the input location it samples from.
    theta = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
    grid = F.affine_grid(theta.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def normalized(dataset: str, pad_to: int | None = None, channels: int | None = None) -> Transform:
    """Zero-pad to a ``pad_to`` square, scale to [0, 1], normalize, repeat to ``channels``.

    Padding happens on the uint8 pixels, so the border is black like MNIST's own background.
    """
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in STATS[dataset])

    def apply(x: np.ndarray) -> torch.Tensor:
        if pad_to is not None:
            x = pad_square(x, pad_to)
        t = (to_unit(x) - mean) / std
        if channels is not None and t.shape[1] != channels:
            t = t.expand(-1, channels, -1, -1).contiguous()
        return t

    return apply
