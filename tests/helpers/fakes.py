"""Stand-ins for the consumer's collaborators in tests that run it without Ray, a model or Milvus."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


class WordSpans:
    """Whitespace tokenizer: one token per word."""

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]


class OnesEmbedder:
    """Every text's vector is the unit vector of equal components, at every dimension asked."""

    async def embed(self, texts: list[str], dims: tuple[int, ...]) -> dict[int, np.ndarray]:
        return {d: np.ones((len(texts), d), dtype=np.float32) / np.sqrt(d) for d in dims}


@dataclass(frozen=True)
class FakeRecord:
    """What the consumer reads of a Kafka record."""

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 1_700_000_000_000
