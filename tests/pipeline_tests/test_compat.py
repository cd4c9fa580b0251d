"""torchvision imports through the compatibility helper next to the CPU torch build."""

import torch

from pipeline._compat import import_torchvision


def test_torchvision_imports_and_rotates() -> None:
    tv = import_torchvision()
    assert tv.__version__.startswith("0.28.0")
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 0, 1] = 1.0  # top middle
    out = tv.transforms.functional.rotate(x, 90.0)  # counter-clockwise: top -> left
    assert out[0, 0, 1, 0] == 1.0 and out.sum() == 1.0
