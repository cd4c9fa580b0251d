"""Atomic file writes: a crash leaves either the old file or the new one, whole.

The bytes go to a temp file in the same folder, are fsync'ed, and only then does ``os.replace``
point the name at them; the folder is fsync'ed afterwards so the rename itself survives a crash.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: Path, write: Callable[[BinaryIO], object],
                 before_replace: Callable[[], object] | None = None) -> None:
    """Create or replace ``path`` with what ``write`` writes to the open binary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:  # not mkstemp: its 0600 mode would ignore the umask
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # persist the rename itself; not every platform lets a directory be fsync'ed
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
