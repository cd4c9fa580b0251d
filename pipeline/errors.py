"""One exception hierarchy for taskpack.

``TaskpackError`` subclasses carry a one-line message meant for a person. The CLI maps
``InputError`` (bad recipe, missing data, unknown store or task) to exit code 2 and every other
``TaskpackError`` to exit code 1, printing the message without a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` naming the closest of ``choices`` (difflib), or ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class TaskpackError(Exception):
    """Base class of every error taskpack raises on purpose."""

    exit_code = 1


class InputError(TaskpackError):
    """The user gave something that cannot be used: exit code 2."""

    exit_code = 2


class RecipeError(InputError):
    """A recipe that does not parse or does not validate."""


class DataMissingError(InputError):
    """A data set is not in the cache; the message names the command that fetches it."""


class StoreError(InputError):
    """A store file that is corrupt, of another version, or built for another model."""


class PipelineError(TaskpackError):
    """A stage failed at run time (training diverged, a build failed, ...)."""
