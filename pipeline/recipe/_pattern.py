"""Pruning pattern strings (``unstructured``, ``channel``, ``n:m``, ``block(h,w)``): the one
parser the recipe schema, the compression passes and the search use."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Pattern"]

_NM = re.compile(r"(\d{1,5}):(\d{1,5})")  # sizes past 99999 are typos, not blocks
_BLOCK = re.compile(r"block\((\d{1,5}),(\d{1,5})\)")


@dataclass(frozen=True)
class Pattern:
    kind: str  # unstructured | nm | block | channel
    a: int = 1  # n (n:m) or h (block)
    b: int = 1  # m (n:m) or w (block)

    @classmethod
    def parse(cls, text: str) -> Pattern:
        """``text`` as a pattern (spaces ignored); ValueError saying what must hold."""
        s = text.replace(" ", "")
        if s in ("unstructured", "channel"):
            return cls(s)
        if m := _NM.fullmatch(s):
            n, size = int(m.group(1)), int(m.group(2))
            if not 0 < n <= size:
                raise ValueError(f"n:m needs 0 < n <= m, got {text!r}")
            return cls("nm", n, size)
        if m := _BLOCK.fullmatch(s):
            h, w = int(m.group(1)), int(m.group(2))
            if h < 1 or w < 1:
                raise ValueError(f"block(h,w) needs h, w >= 1, got {text!r}")
            return cls("block", h, w)
        raise ValueError(f"must be unstructured, channel, n:m or block(h,w), got {text!r}")

    def __str__(self) -> str:
        return {"nm": f"{self.a}:{self.b}", "block": f"block({self.a},{self.b})"}.get(
            self.kind, self.kind)
