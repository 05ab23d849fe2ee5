"""The frame every settings section shares: frozen, no unknown keys, ordered pairs checked."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Self

from pydantic import BaseModel, ConfigDict, SecretStr, model_validator

from workers.errors import ConfigError


class Section(BaseModel):
    """A frozen settings section that refuses unknown keys and contradictory values (``_ordered``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    _ordered: ClassVar[tuple[tuple[str, str, bool], ...]] = ()  # (low, high, strict): low <= high (<)
    _secret_files: ClassVar[tuple[tuple[str, str], ...]] = ()  # (secret, file holding it): one or neither

    @model_validator(mode="after")
    def _in_order(self) -> Self:
        for low, high, strict in self._ordered:
            if (a := getattr(self, low)) > (b := getattr(self, high)) or (strict and a == b):
                raise ValueError(f"{low} ({a}) must be {'below' if strict else 'at most'} {high} ({b})")
        for secret, file in self._secret_files:
            if getattr(self, secret) is not None and getattr(self, file) is not None:
                raise ValueError(f"give {secret} or {file}, not both")
        return self


def read_secret(value: SecretStr | None, path: Path | None, what: str) -> str | None:
    """The secret given as ``value`` or held in the file ``path`` (one trailing newline dropped).

    A file is read where the secret is used, so a process on another node (a consumer actor)
    reads its own copy and the secret never travels through Ray.
    """
    if value is not None:
        return value.get_secret_value()
    if path is None:
        return None
    try:
        return path.read_text(encoding="utf-8").removesuffix("\n")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} from {path}: {exc.strerror}") from exc
