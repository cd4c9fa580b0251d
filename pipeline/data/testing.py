"""Tiny fake data sets written in the real on-disk layouts, for tests (ours and other packages').

Every writer makes a few examples per class, deterministically. MNIST-family images carry their
own identity: pixel (0, 0) and (0, 1) hold the example's id (``TEST_ID_OFFSET`` added for test
examples), so a test can tell which raw examples a split holds with ``example_ids``.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from pipeline.data._cache import npz_path, save_images
from pipeline.data._idx import write_idx
from pipeline.data._types import Images

TEST_ID_OFFSET = 30_000


def fake_mnist_images(train_per_class: int = 12, test_per_class: int = 4, seed: int = 0) -> Images:
    """uint8 ``[N, 28, 28]`` images of 10 classes, labels in class-interleaved order."""
    rng = np.random.default_rng(seed)

    def part(per_class: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
        n = 10 * per_class
        y = np.arange(n) % 10
        x = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        ids = np.arange(n) + offset
        x[:, 0, 0], x[:, 0, 1] = ids % 256, ids // 256
        return x, y.astype(np.uint8)

    return Images(*part(train_per_class, 0), *part(test_per_class, TEST_ID_OFFSET))


def example_ids(x: torch.Tensor) -> np.ndarray:
    """Ids written by ``fake_mnist_images``, read back from unpermuted [0, 1] images."""
    pixels = torch.round(x[:, 0, 0, :2] * 255).to(torch.int64).numpy()
    return pixels[:, 0] + 256 * pixels[:, 1]


def write_fake_cache(cache_dir: Path, name: str = "mnist", **kwargs: int) -> Images:
    """Write a fake ``mnist`` or ``fashion-mnist`` npz into ``cache_dir``, as ``fetch`` would."""
    images = fake_mnist_images(**kwargs)
    save_images(npz_path(name, cache_dir), images)
    return images


def write_fake_idx(folder: Path, images: Images, compress: bool = True) -> None:
    """The four (Fashion-)MNIST IDX files of ``images`` in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    for stem, array in (
        ("train-images-idx3-ubyte", images.train_x),
        ("train-labels-idx1-ubyte", images.train_y),
        ("t10k-images-idx3-ubyte", images.test_x),
        ("t10k-labels-idx1-ubyte", images.test_y),
    ):
        write_idx(folder / f"{stem}{suffix}", array, compress=compress)


def _colour(n: int, classes: int, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    labels = [i % classes for i in range(n)]
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), labels


def write_fake_cifar10(root: Path, train_per_class: int = 3, test_per_class: int = 2) -> None:
    """``root/cifar-10-batches-py/{data_batch_1..5,test_batch}``, pickled like the original."""
    rng = np.random.default_rng(10)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        x, y = _colour(10 * train_per_class, 10, rng)
        _pickle(folder / f"data_batch_{i}", {b"data": x, b"labels": y})
    x, y = _colour(10 * test_per_class, 10, rng)
    _pickle(folder / "test_batch", {b"data": x, b"labels": y})


def write_fake_cifar100(root: Path, train_per_class: int = 3, test_per_class: int = 1) -> None:
    """``root/cifar-100-python/{train,test}`` with ``b"fine_labels"`` and ``b"coarse_labels"``."""
    rng = np.random.default_rng(100)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        x, y = _colour(100 * per_class, 100, rng)
        _pickle(
            folder / name, {b"data": x, b"fine_labels": y, b"coarse_labels": [c // 5 for c in y]}
        )


def write_fake_svhn(root: Path, train_per_class: int = 3, test_per_class: int = 2) -> None:
    """``root/{train,test}_32x32.mat``: X is ``[32, 32, 3, N]``, y is ``[N, 1]`` with 10 for 0."""
    from scipy.io import savemat

    rng = np.random.default_rng(7)
    root.mkdir(parents=True, exist_ok=True)
    for name, per_class in (("train", train_per_class), ("test", test_per_class)):
        n = 10 * per_class
        y = np.arange(n) % 10
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        savemat(root / f"{name}_32x32.mat", {"X": x, "y": np.where(y == 0, 10, y)[:, None]})


def write_fake_notmnist(root: Path, per_letter: int = 5, broken: int = 1) -> None:
    """``root/notMNIST_small/<A..J>/*.png`` (28x28 grayscale), plus ``broken`` empty PNGs in A."""
    from PIL import Image

    rng = np.random.default_rng(3)
    for letter in "ABCDEFGHIJ":
        folder = root / "notMNIST_small" / letter
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_letter):
            pixels = rng.integers(0, 256, size=(28, 28), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{letter}{i:03d}.png")
    for i in range(broken):
        (root / "notMNIST_small" / "A" / f"zz_broken{i}.png").write_bytes(b"")


def write_fake_tinyimagenet(
    root: Path, classes: int = 6, train_per_class: int = 3, val_per_class: int = 2
) -> list[str]:
    """``root/tiny-imagenet-200`` with ``classes`` wnids of tiny 64x64 JPEGs; returns the wnids.

    The last class's first training image is grayscale, as some real ones are.
    """
    from PIL import Image

    rng = np.random.default_rng(200)
    folder = root / "tiny-imagenet-200"
    wnids = [f"n{1000 + 7 * k:08d}" for k in range(classes)]
    (folder / "val" / "images").mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")  # not sorted, on purpose
    annotations = []
    for k, wnid in enumerate(wnids):
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True, exist_ok=True)
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(train_per_class):
            gray = k == classes - 1 and i == 0
            shape = (64, 64) if gray else (64, 64, 3)
            pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(pixels).save(images / f"{wnid}_{i}.JPEG")
        for i in range(val_per_class):
            name = f"val_{k * val_per_class + i}.JPEG"
            Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(
                folder / "val" / "images" / name
            )
            annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    return wnids


def _pickle(path: Path, obj: object) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)
