"""Per-task extra tensors (heads, BN statistics...): stored byte for byte with their dtype.

Each tensor is its raw little-endian element bytes in C order; name, dtype and shape live in the
task's meta section. No pickle: the dtype is one of a closed list of names.
"""

from __future__ import annotations

import math
import sys

import torch

from pipeline.errors import StoreError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "bool": torch.bool,
}
_NAMES = {v: k for k, v in DTYPES.items()}

if sys.byteorder != "little":  # the format is little-endian and tensors are copied raw
    raise ImportError("pipeline.store needs a little-endian machine")


def dtype_name(t: torch.Tensor, what: str) -> str:
    """The store's name of ``t``'s dtype; StoreError for dtypes the format does not hold."""
    if t.dtype not in _NAMES:
        raise StoreError(f"{what}: tensor dtype must be one of {sorted(DTYPES)}, found {t.dtype}")
    if t.layout != torch.strided:
        raise StoreError(f"{what}: tensors must be dense (strided), found layout {t.layout}")
    return _NAMES[t.dtype]


def tensor_to_bytes(t: torch.Tensor) -> bytes:
    """Raw element bytes of ``t`` in C order."""
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    return flat.view(torch.uint8).numpy().tobytes()


def check_entry(e: object, what: str) -> None:
    """A tensor entry of a task's meta must name a known dtype and a shape matching its length."""
    if not (
        isinstance(e, dict)
        and isinstance(e.get("name"), str)
        and e.get("dtype") in DTYPES
        and isinstance(e.get("shape"), list)
        and all(isinstance(s, int) and s >= 0 for s in e["shape"])
        and isinstance(e.get("length"), int)
    ):
        raise StoreError(f"{what}: tensor entries must have name/dtype/shape/length, found {e!r}")
    need = math.prod(e["shape"]) * torch.empty(0, dtype=DTYPES[e["dtype"]]).element_size()
    if e["length"] != need:
        raise StoreError(
            f"{what}: tensor '{e['name']}' {e['dtype']}{e['shape']} must take {need} bytes, "
            f"found {e['length']}"
        )


def tensor_from_bytes(buf: bytes | memoryview, dtype: str, shape: list[int]) -> torch.Tensor:
    """Inverse of :func:`tensor_to_bytes` (a fresh tensor that owns its memory); entries are
    checked with :func:`check_entry` when the store is opened."""
    td = DTYPES[dtype]
    if math.prod(shape) == 0:
        return torch.empty(shape, dtype=td)
    return torch.frombuffer(bytearray(buf), dtype=torch.uint8).view(td).reshape(shape)
