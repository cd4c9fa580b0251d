"""Render a local HTML page in headless Chromium: the DOM after its scripts ran, and every
message the page wrote to the console (an uncaught exception is one)."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome")
CONSOLE = re.compile(r":CONSOLE[:(]")


@dataclass(frozen=True)
class Rendered:
    dom: str
    console: list[str]  # lines Chromium logged for the page's console


def chromium() -> str:
    """The Chromium binary; skips the test (saying how to install it) when there is none."""
    for name in NAMES:
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("headless Chromium is not installed (`make chromium` installs it: "
                "apt-get install chromium)")


def render(page: Path, profile: Path, wait_ms: int = 10_000) -> Rendered:
    """``--dump-dom`` after ``wait_ms`` of virtual time (the page's scripts have run)."""
    args = [chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--no-first-run",
            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
            f"--virtual-time-budget={wait_ms}", "--dump-dom", page.resolve().as_uri()]
    done = subprocess.run(args, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return Rendered(done.stdout, [ln for ln in done.stderr.splitlines() if CONSOLE.search(ln)])
