"""Damaged stores whose checksums all pass: the content itself is impossible (a NaN codebook
entry, a code past its codebook, mask counts that disagree). Shared by tests/pipeline_tests and
benchmarks/reliability.py."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import torch

from pipeline.store import LayerCommit, PackedStore, TaskCommit
from pipeline.store._format import build_file, parse_file

NAN = struct.pack("<f", float("nan"))
INF = struct.pack("<f", float("inf"))


def small_store(path: Path) -> Path:
    """One task: layer fc (2-bit codes, a 3-entry codebook), layer out (fp32), a float head."""
    store = PackedStore.create(path, {"fc": (4, 8), "out": (2, 4)}, "damage-test", 32)
    fc_own = torch.zeros(4, 8, dtype=torch.bool)
    fc_own[0] = True
    fc = torch.zeros(4, 8)
    fc[0] = torch.tensor([0.5, -0.5, 0.5, 0.25, -0.5, 0.25, 0.25, 0.5])
    out_own = torch.zeros(2, 4, dtype=torch.bool)
    out_own[0] = True
    out = torch.zeros(2, 4)
    out[0] = torch.tensor([1.0, -2.0, 3.0, -4.0])
    store.commit(TaskCommit(
        0, {"fc": LayerCommit(fc_own, fc_own, 2, fc, torch.tensor([-0.5, 0.25, 0.5])),
            "out": LayerCommit(out_own, out_own, 32, out)},
        {"heads.0.weight": torch.ones(3, 4)}, {"name": "t0"}))
    return path


def rewrite_sections(path: Path, patch: dict[str, Callable[[bytes], bytes]]) -> None:
    """Replace sections' bytes and write the file again with every checksum recomputed."""
    data = path.read_bytes()
    sections = parse_file(data, str(path))
    new = [(s.name, patch.get(s.name, lambda b: b)(data[s.offset : s.offset + s.length]))
           for s in sections]
    path.write_bytes(build_file(b"", [], new)[0])


def _at(offset: int, new: bytes) -> Callable[[bytes], bytes]:
    return lambda b: b[:offset] + new + b[offset + len(new):]


def _meta(old: bytes, new: bytes) -> Callable[[bytes], bytes]:
    return lambda b: b.replace(old, new, 1)


# name -> (section patches, text the StoreError must contain); offsets follow small_store
# (fp32 values are stored as given, inf and NaN included: only codebooks must be finite):
# task/0/codes = fc's 2-bit codes (2 bytes) + out's 4 fp32 values; codebooks = fc's 3 entries
CONTENT_DAMAGE: dict[str, tuple[dict[str, Callable[[bytes], bytes]], str]] = {
    "nan-codebook-entry": ({"task/0/codebooks": _at(4, NAN)}, "codebook entries must be finite"),
    "inf-codebook-entry": ({"task/0/codebooks": _at(0, INF)}, "codebook entries must be finite"),
    "code-past-codebook": ({"task/0/codes": _at(0, b"\xff")}, "codes must be < codebook size 3"),
    "mask-count": ({"task/0/meta": _meta(b'"count":8', b'"count":7')},
                   "mask counts must match the meta"),
    "own-count": ({"task/0/meta": _meta(b'"own":4', b'"own":5')},
                  "mask counts must match the meta"),
    "codebook-size": ({"task/0/meta": _meta(b'"k":3', b'"k":5')},
                      "codebook must take 4*k bytes"),
}
