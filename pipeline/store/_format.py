"""File format v2: fixed header, checksummed sections, JSON section table (docs/store-format.md).

Version 2 added the optional ``base`` section (a fixed signed-constant backbone, _base.py); a
version-1 file is a version-2 file without it, so both are read, and a commit to a version-1
store writes version 2.

Layout: ``[header 40 B][section 0][section 1]...[section n-1][table]``. Sections tile the bytes
between the header and the table with no gap; the table sits at the end so a commit appends the new
task's sections after the old ones, leaving every earlier byte at the same offset with the same
value. Nothing read from the file is trusted before it is checked against the file size and its
checksum.
"""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any, NamedTuple

from pipeline.errors import StoreError

MAGIC = b"TPKSTORE"
VERSION = 2
READABLE_VERSIONS = (1, 2)
# magic, version, header size, table offset, table length, table crc32, header crc32
_HEADER = struct.Struct("<8sIIQQII")
HEADER_SIZE = _HEADER.size  # 40


class Section(NamedTuple):
    """One entry of the section table."""

    name: str
    offset: int
    length: int
    crc32: int


def canonical_json(obj: Any) -> bytes:
    """Deterministic compact JSON: the same object always gives the same bytes."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def crc32(buf: bytes | memoryview) -> int:
    return zlib.crc32(buf) & 0xFFFFFFFF


def build_file(
    prefix: bytes | memoryview, old: list[Section], new: list[tuple[str, bytes]]
) -> tuple[bytes, list[Section]]:
    """Assemble a whole file from the kept section bytes ``prefix`` (header excluded) plus ``new``.

    ``prefix`` holds the bytes of ``old`` exactly as they sit in the current file, so earlier
    tasks' sections are copied, never re-encoded.
    """
    sections = list(old)
    offset = HEADER_SIZE + len(prefix)
    chunks: list[bytes | memoryview] = [b"", prefix]
    for name, payload in new:
        sections.append(Section(name, offset, len(payload), crc32(payload)))
        chunks.append(payload)
        offset += len(payload)
    table = canonical_json({"sections": [list(s) for s in sections]})
    head = _HEADER.pack(MAGIC, VERSION, HEADER_SIZE, offset, len(table), crc32(table), 0)
    chunks[0] = head[:-4] + struct.pack("<I", crc32(head[:-4]))
    chunks.append(table)
    return b"".join(chunks), sections


def parse_file(data: bytes, where: str) -> list[Section]:
    """Validate header, table and every section checksum of a whole store file."""
    size = len(data)
    if size < HEADER_SIZE:
        raise StoreError(
            f"{where}: a store must hold at least its {HEADER_SIZE}-byte header, found {size} "
            "bytes (truncated?)"
        )
    magic, version, hsize, t_off, t_len, t_crc, h_crc = _HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise StoreError(f"{where}: a store must start with {MAGIC!r}, found {magic!r}")
    if version not in READABLE_VERSIONS:
        raise StoreError(
            f"{where}: store format version {version} is not supported; this taskpack reads "
            f"versions {', '.join(map(str, READABLE_VERSIONS))}"
        )
    if crc32(data[: HEADER_SIZE - 4]) != h_crc:
        raise StoreError(f"{where}: the header checksum must match, found a mismatch (corrupt)")
    if hsize != HEADER_SIZE or t_off < HEADER_SIZE:
        raise StoreError(
            f"{where}: header must describe a {HEADER_SIZE}-byte header, found {hsize}"
        )
    if t_off + t_len != size:
        what = "truncated" if t_off + t_len > size else "trailing bytes"
        raise StoreError(
            f"{where}: the section table must end at the end of the file (byte {t_off + t_len}), "
            f"found a file of {size} bytes ({what})"
        )
    table = data[t_off:size]
    if crc32(table) != t_crc:
        raise StoreError(f"{where}: the section table checksum must match, found a mismatch")
    try:
        raw = json.loads(table)["sections"]
        sections = [Section(str(n), int(o), int(ln), int(c)) for n, o, ln, c in raw]
    except (ValueError, KeyError, TypeError) as exc:
        raise StoreError(f"{where}: the section table must be valid JSON, found {exc}") from None
    expect = HEADER_SIZE
    seen: set[str] = set()
    for s in sections:
        if s.offset != expect or s.length < 0 or s.offset + s.length > t_off or s.name in seen:
            raise StoreError(
                f"{where}: section '{s.name}' must start at byte {expect} and end before the "
                f"table at {t_off}, found offset {s.offset} length {s.length}"
            )
        seen.add(s.name)
        if crc32(memoryview(data)[s.offset : s.offset + s.length]) != s.crc32:
            raise StoreError(f"{where}: section '{s.name}' checksum must match, found a mismatch")
        expect = s.offset + s.length
    if expect != t_off:
        raise StoreError(
            f"{where}: sections must fill the file up to the table at {t_off}, found {expect}"
        )
    return sections


def file_version(data: bytes) -> int:
    """The format version in a header that ``parse_file`` accepted."""
    return int(_HEADER.unpack_from(data, 0)[1])


def parse_json_section(buf: bytes | memoryview, name: str) -> dict[str, Any]:
    try:
        obj = json.loads(bytes(buf))
    except ValueError as exc:
        raise StoreError(f"section '{name}' must be JSON, found {exc}") from None
    if not isinstance(obj, dict):
        raise StoreError(f"section '{name}' must be a JSON object, found {type(obj).__name__}")
    return obj
