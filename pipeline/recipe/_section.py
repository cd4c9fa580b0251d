"""What every recipe section shares: frozen, unknown keys rejected; the allowed bit-widths."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

BITS = (1, 2, 3, 4, 6, 8, 16, 32)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
