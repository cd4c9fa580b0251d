"""TinyImageNet (``tiny-imagenet-200/``) read per task: only the classes a task uses are decoded.

The whole training set is 100k JPEGs (1.2 GB as uint8), so it is never loaded at once: a task of
five classes decodes its 2,500 training and 250 validation images. The official validation set
serves as the test split (the official test set has no labels).
"""

from __future__ import annotations

import functools
from collections import defaultdict
from pathlib import Path

import numpy as np

from pipeline.data._local import read_image
from pipeline.data._types import Images
from pipeline.errors import InputError

SIZE = (64, 64)


class TinyImageNet:
    """The data set at ``<root>/tiny-imagenet-200``; ``require`` has checked its layout."""

    def __init__(self, root: Path) -> None:
        self.folder = Path(root) / "tiny-imagenet-200"

    @functools.cached_property
    def wnids(self) -> list[str]:
        """The class ids, sorted, so the class order does not depend on the file's order."""
        lines = (self.folder / "wnids.txt").read_text().split()
        return sorted(set(lines))

    @functools.cached_property
    def _val_files(self) -> dict[str, list[str]]:
        by_class: dict[str, list[str]] = defaultdict(list)
        for line in (self.folder / "val" / "val_annotations.txt").read_text().splitlines():
            fields = line.split("\t")
            if len(fields) >= 2:
                by_class[fields[1]].append(fields[0])
        return {k: sorted(v) for k, v in by_class.items()}

    def load(self, wnids: list[str]) -> Images:
        """Images of the classes ``wnids``; labels are positions in ``wnids``."""
        train = [self._train_files(w) for w in wnids]
        test = [
            [self.folder / "val" / "images" / f for f in self._val_files.get(w, [])] for w in wnids
        ]
        return Images(*_read_all(train), *_read_all(test))

    def _train_files(self, wnid: str) -> list[Path]:
        files = sorted((self.folder / "train" / wnid / "images").glob("*.JPEG"))
        if not files:
            raise InputError(
                f"TinyImageNet class {wnid} has no images in {self.folder / 'train' / wnid}"
            )
        return files


def _read_all(files_per_class: list[list[Path]]) -> tuple[np.ndarray, np.ndarray]:
    xs = [read_image(p, "RGB", SIZE) for files in files_per_class for p in files]
    ys = [label for label, files in enumerate(files_per_class) for _ in files]
    if not xs:
        return np.zeros((0, 3, *SIZE), np.uint8), np.zeros(0, np.int64)
    return np.stack(xs), np.asarray(ys, dtype=np.int64)
