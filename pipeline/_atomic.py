"""Atomic file writes: a crash leaves either the old file or the new one, whole.

The bytes go to a temp file in the same folder, are fsync'ed, and only then does ``os.replace``
point the name at them; the folder is fsync'ed afterwards so the rename itself survives a crash.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

# ".<name>.<pid>.<8 hex>.tmp": hidden, beside the file it replaces, naming the writing process
_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<pid>[0-9]{1,10})\.[0-9a-f]{8}\.tmp")


def temp_path(path: Path) -> Path:
    """Where ``atomic_write`` puts the bytes of ``path`` before the rename."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def remove_stale_temp_files(folder: Path, owned: Callable[[str], bool]) -> list[Path]:
    """Delete the temp files that writers of ``folder``'s files named by ``owned`` left behind
    when they were killed between writing and renaming (only files of our own pattern, and only
    those whose writing process is no longer alive). Returns what was deleted."""
    removed: list[Path] = []
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP.fullmatch(entry.name)
        if m is None or not owned(m["name"]) or process_alive(int(m["pid"])):
            continue
        if entry.is_symlink() or not entry.is_file():
            continue
        try:
            entry.unlink()
        except FileNotFoundError:  # removed by another process meanwhile
            continue
        removed.append(entry)
    return removed


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this machine may still run (another user's counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OverflowError:  # not a pid at all
        return False
    return True


def atomic_write(path: Path, write: Callable[[BinaryIO], object],
                 before_replace: Callable[[], object] | None = None) -> None:
    """Create or replace ``path`` with what ``write`` writes to the open binary file."""
    path = Path(path)
    tmp = temp_path(path)
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
