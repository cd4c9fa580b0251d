"""Writing a store file: whole or not at all, with a test hook that widens the crash window."""

from __future__ import annotations

import os
import time
from pathlib import Path

from pipeline._atomic import atomic_write
from pipeline.errors import StoreError

# Seconds to sleep before the new file replaces the old one: the SIGKILL tests aim at that window.
SLEEP_ENV = "TASKPACK_STORE_SLEEP_BEFORE_REPLACE"


def write_store_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old or the new file, whole."""
    delay = os.environ.get(SLEEP_ENV, "")
    try:
        # the sleep is a test hook: it widens the window a SIGKILL test aims at
        atomic_write(path, lambda f: f.write(data),
                     before_replace=(lambda: time.sleep(_parse_delay(delay))) if delay else None)
    except OSError as exc:
        raise StoreError(f"store file {path} must be writable, found {exc}") from None


def _parse_delay(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise StoreError(f"{SLEEP_ENV} must be a number of seconds, found {text!r}") from None
