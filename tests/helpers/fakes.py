"""Stand-ins for the consumer's collaborators in tests that run it without Ray, a model or Milvus."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from aiokafka import TopicPartition

from pipeline.documents import DocumentWrite, WriteResult
from workers.model.embedding_model import EmbeddingModel, ModelInfo


class WordSpans:
    """Whitespace tokenizer: one token per word."""

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]


class OnesEmbedder:
    """Every text's vector is the unit vector of equal components, at every dimension asked."""

    async def embed(self, texts: list[str], dims: tuple[int, ...]) -> dict[int, np.ndarray]:
        return {d: np.ones((len(texts), d), dtype=np.float32) / np.sqrt(d) for d in dims}


class AcceptingSink:
    """A sink that takes every write at once and notes the doc ids written, in order (stores nothing)."""

    def __init__(self) -> None:
        self.written: list[str] = []

    def write(self, writes: Sequence[DocumentWrite]) -> WriteResult:
        self.written.extend(w.doc_id for w in writes)
        return WriteResult(rejected={}, documents=len(writes), rows=0)


@dataclass(frozen=True)
class FakeRecord:
    """What the consumer reads of a Kafka record."""

    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: int = 1_700_000_000_000


class ModelQueryPool:
    """A query pool in this process: the model embeds the raw queries (no instruction, as MiniLM takes
    them), without the Ray hop; enough for API tests that are not about the pool."""

    def __init__(self, model: EmbeddingModel) -> None:
        self.model = model

    @property
    def info(self) -> ModelInfo:
        return self.model.info()

    async def embed_queries(
        self, queries: list[str], dims: tuple[int, ...], task: str | None = None, adapter: str | None = None
    ) -> dict[int, np.ndarray]:
        return self.model.embed(queries, dims, adapter)


class CommitRecorder:
    """The Kafka consumer as an ingest member's commits see it: records every commit; nothing was
    committed before (each partition starts at offset 0)."""

    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    async def committed(self, tp: TopicPartition) -> int | None:
        return 0
