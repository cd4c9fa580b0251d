"""Readers for data sets a user keeps locally (``benchmark.data_dir``), in their official layouts.

CIFAR, SVHN, notMNIST and TinyImageNet cannot be fetched here, so each is read from the folder or
files its authors distribute; nothing is converted or cached. ``require`` checks the layout before
anything loads, so a stream fails at build time with a message saying what was expected where.
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.data._types import Images
from pipeline.errors import DataMissingError, InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    pretty: str
    folder: str  # relative to data_dir; "" when the files lie in data_dir itself
    files: tuple[str, ...]  # relative to folder
    origin: str

    def paths(self) -> list[str]:
        prefix = f"{self.folder}/" if self.folder else ""
        return [p for p in (self.folder,) if p] + [prefix + f for f in self.files]

    def expected(self) -> str:
        prefix = f"{self.folder}/" if self.folder else ""
        return ", ".join(prefix + f for f in self.files)


_CIFAR = "the python version of https://www.cs.toronto.edu/~kriz/cifar.html"
LAYOUTS = {
    "cifar10": Layout(
        "CIFAR-10",
        "cifar-10-batches-py",
        (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"),
        _CIFAR,
    ),
    "cifar100": Layout("CIFAR-100", "cifar-100-python", ("train", "test"), _CIFAR),
    "svhn": Layout(
        "SVHN",
        "",
        ("train_32x32.mat", "test_32x32.mat"),
        "format 2 (cropped digits) of http://ufldl.stanford.edu/housenumbers/",
    ),
    "notmnist": Layout(
        "notMNIST",
        "notMNIST_small",
        tuple("ABCDEFGHIJ"),
        "notMNIST_small: one folder of 28x28 PNGs per letter A..J",
    ),
    "tinyimagenet": Layout(
        "TinyImageNet",
        "tiny-imagenet-200",
        ("wnids.txt", "train", "val/images", "val/val_annotations.txt"),
        "tiny-imagenet-200.zip of http://cs231n.stanford.edu/, unzipped",
    ),
}


def require(name: str, data_dir: Path | None, stream: str) -> Path:
    """``data_dir`` if it holds data set ``name`` in its layout, else ``DataMissingError``."""
    layout = LAYOUTS[name]
    if data_dir is None:
        raise DataMissingError(
            f"stream {stream!r} reads {layout.pretty} from a local folder, but benchmark.data_dir "
            f"is not set; point it at a folder holding {layout.expected()} ({layout.origin})"
        )
    root = Path(data_dir).expanduser()
    missing = [p for p in layout.paths() if not (root / p).exists()]
    if missing:
        raise DataMissingError(
            f"{layout.pretty} is not in benchmark.data_dir ({root}): expected "
            f"{layout.expected()} ({layout.origin}); missing {', '.join(missing)}"
        )
    return root


def load_cifar10(root: Path) -> Images:
    folder = root / "cifar-10-batches-py"
    train = [_cifar_batch(folder / f"data_batch_{i}", b"labels") for i in range(1, 6)]
    tx, ty = _cifar_batch(folder / "test_batch", b"labels")
    return Images(
        np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), tx, ty
    )


def load_cifar100(root: Path) -> Images:
    folder = root / "cifar-100-python"
    return Images(
        *_cifar_batch(folder / "train", b"fine_labels"),
        *_cifar_batch(folder / "test", b"fine_labels"),
    )


def _cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    # CIFAR is distributed as Python pickles. Unpickling runs code from the file, which is
    # acceptable only because the user supplied these files from the official distribution.
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    try:
        data, labels = batch[b"data"], batch[label_key]
    except (KeyError, TypeError):
        raise InputError(
            f"{path} is not a CIFAR batch: it needs keys b'data' and {label_key!r}"
        ) from None
    x = np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(labels, dtype=np.int64)


def load_svhn(root: Path) -> Images:
    return Images(*_svhn_mat(root / "train_32x32.mat"), *_svhn_mat(root / "test_32x32.mat"))


def _svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        from scipy.io import loadmat
    except ImportError:
        raise InputError(
            f"reading SVHN ({path}) needs scipy, which is not installed: pip install scipy"
        ) from None
    mat = loadmat(path)
    x = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)), dtype=np.uint8)  # HWCN->NCHW
    y = mat["y"].reshape(-1).astype(np.int64)
    return x, np.where(y == 10, 0, y)  # SVHN labels the digit 0 as class 10


# notMNIST_small ships without a test split: every fifth file of each letter (sorted by name) is
# test. The split is fixed, not seeded, so that test sets match across seeds and runs.
NOTMNIST_TEST_EVERY = 5


def load_notmnist(root: Path) -> Images:
    parts: dict[bool, tuple[list[np.ndarray], list[int]]] = {False: ([], []), True: ([], [])}
    skipped = 0
    for label, letter in enumerate("ABCDEFGHIJ"):
        for i, path in enumerate(sorted((root / "notMNIST_small" / letter).glob("*.png"))):
            image = try_read_image(path, "L", (28, 28))
            if image is None:
                skipped += 1
                continue
            xs, ys = parts[i % NOTMNIST_TEST_EVERY == NOTMNIST_TEST_EVERY - 1]
            xs.append(image)
            ys.append(label)
    if skipped:
        log.warning(
            "skipped %d unreadable notMNIST images (the official archive has some)", skipped
        )
    (trx, tr_y), (tex, te_y) = parts[False], parts[True]
    if not trx or not tex:
        raise InputError(f"notMNIST in {root / 'notMNIST_small'} has too few readable PNGs")
    return Images(
        np.stack(trx), np.asarray(tr_y, np.int64), np.stack(tex), np.asarray(te_y, np.int64)
    )


def read_image(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray:
    """One image as uint8 ``[C, H, W]`` in PIL ``mode`` ("L" or "RGB"); size is (width, height)."""
    image = try_read_image(path, mode, size)
    if image is None:
        raise InputError(f"cannot read image {path}")
    return image


def try_read_image(path: Path, mode: str, size: tuple[int, int]) -> np.ndarray | None:
    """Like ``read_image``, but ``None`` for a file PIL cannot read (notMNIST has empty PNGs)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as src:
            im = src.convert(mode)
    except (OSError, UnidentifiedImageError):
        return None
    if im.size != size:
        raise InputError(
            f"image {path} must be {size[0]}x{size[1]}, got {im.size[0]}x{im.size[1]}"
        )
    array = np.asarray(im, dtype=np.uint8)
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))
