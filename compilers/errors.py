"""Errors raised by the compilers package.

One hierarchy so callers (the pipeline, the search) can catch ``CompilerError`` and classify
failures without parsing messages: a failed build is a property of the candidate, a timeout or a
lost device is a property of the measuring machine and is worth a retry.
"""

from __future__ import annotations

__all__ = [
    "BuildFailed",
    "CompilerError",
    "DeviceLost",
    "NumericsMismatch",
    "RunTimedOut",
    "TargetUnavailable",
]


class CompilerError(Exception):
    """Base class of every error raised by ``compilers``."""


class BuildFailed(CompilerError):
    """The model could not be exported, lowered or built for the target."""


class RunTimedOut(CompilerError):
    """A run or measurement did not finish within its time limit."""


class DeviceLost(CompilerError):
    """The (remote) device stopped answering or the session broke during a run."""


class NumericsMismatch(CompilerError):
    """The compiled model's outputs differ from the eager reference beyond the tolerance."""


class TargetUnavailable(CompilerError):
    """The target cannot be used here (no GPU, no cross compiler, no TVM, export-only target)."""
