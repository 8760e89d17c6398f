"""The base class of every typed config: frozen, strict, unknown keys are errors."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Config(BaseModel):
    """Frozen, strict config section. Unknown keys raise; defaults are documented per field."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, validate_default=True)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")
