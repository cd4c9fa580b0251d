"""What every recipe section shares: frozen, strict, unknown keys rejected; the allowed
bit-widths; the path type.

Strict: a number is a number (``lr: true`` is not 1.0, ``epochs: 2.5`` is not 2, ``"3"`` is not
3), a boolean is ``true``/``false``, and null is accepted only where a field says ``| None``.
Floats must be finite. Fields that YAML cannot spell in their Python type (paths, tuples) relax
the container only, with ``Field(strict=False)``; their items stay strict.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

BITS = (1, 2, 3, 4, 6, 8, 16, 32)
MAX_SEED = 2**31 - 1  # with seed + task still a valid numpy / Optuna seed (< 2**32)
MAX_PATH = 4096  # PATH_MAX on Linux


def _path_ok(v: Path) -> Path:
    text = str(v)
    if "\x00" in text:
        raise ValueError("paths must not contain a NUL byte")
    if len(text) > MAX_PATH:
        raise ValueError(f"paths must be at most {MAX_PATH} characters, found {len(text)}")
    return v


def check_regex(text: str) -> str:
    """``text`` if it compiles as a Python regular expression; ValueError (one line) if not.

    ``re.compile`` raises more than ``re.error`` on hostile patterns (RecursionError for deeply
    nested groups, OverflowError for huge repeat counts) and warns on some (FutureWarning).
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            re.compile(text)
    except (re.error, RecursionError, OverflowError, Warning) as e:
        raise ValueError(f"not a valid regular expression: {str(e)[:100]}") from None
    return text


# a filesystem path written as a YAML string
RecipePath = Annotated[Path, Field(strict=False), AfterValidator(_path_ok)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


# Upper bounds: far above any real run, low enough that a typo cannot ask for years of compute or
# terabytes of memory. Each is in the field's schema (``taskpack schema``).
MAX_EPOCHS = 10_000
MAX_BATCH = 1 << 20
MAX_EXAMPLES = 100_000_000
MAX_WIDTH = 1 << 16
# A folder name under output_dir: no path separators, not "." or ".." and no leading dot
# (``--fresh`` deletes the run folder, so a name that points outside it would delete other data).
SAFE_NAME = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"
Text = Annotated[str, Field(max_length=4096)]
Name = Annotated[str, Field(min_length=1, max_length=128)]
