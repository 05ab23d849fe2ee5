"""The frame every settings section shares: frozen, no unknown keys, ordered pairs checked."""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import BaseModel, ConfigDict, model_validator


class Section(BaseModel):
    """A frozen settings section that refuses unknown keys and contradictory values (``_ordered``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    _ordered: ClassVar[tuple[tuple[str, str, bool], ...]] = ()  # (low, high, strict): low <= high (<)

    @model_validator(mode="after")
    def _in_order(self) -> Self:
        for low, high, strict in self._ordered:
            if (a := getattr(self, low)) > (b := getattr(self, high)) or (strict and a == b):
                raise ValueError(f"{low} ({a}) must be {'below' if strict else 'at most'} {high} ({b})")
        return self
