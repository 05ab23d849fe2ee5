"""The vocabulary between the ingest loop, the Milvus replicas and the read side.

A document is stored as chunk rows, one row per chunk in every dimension replica, keyed
``f"{doc_id}#{chunk_index}"``.  The ingest loop produces :data:`DocumentWrite` values, a
:class:`Sink` applies them and answers with a :class:`WriteResult`; searches answer with
:class:`Hit` values.  Nothing here talks to Kafka, Ray or Milvus.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from workers.errors import PoisonInput


@dataclass(frozen=True)
class ChunkRow:
    """One chunk of a document, as stored in every replica."""

    doc_id: str
    chunk_index: int
    text: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class UpsertDocument:
    """Replace every chunk of ``doc_id``; ``vectors[dim]`` has shape ``(len(chunks), dim)``."""

    doc_id: str
    chunks: Sequence[ChunkRow]
    vectors: Mapping[int, np.ndarray]


@dataclass(frozen=True)
class DeleteDocument:
    """Remove every chunk of ``doc_id``."""

    doc_id: str


DocumentWrite = UpsertDocument | DeleteDocument


@dataclass(frozen=True)
class WriteResult:
    """Outcome of :meth:`Sink.write`.

    Every write not in ``rejected`` has been applied or superseded by a later write.
    """

    rejected: Mapping[int, PoisonInput]  # position in ``writes`` -> why Milvus can never take it
    documents: int  # documents whose final state was written (upserted or deleted)
    rows: int  # chunk rows upserted into each replica


@dataclass(frozen=True)
class Hit:
    """One search result; ``text`` / ``metadata`` are None when not requested."""

    pk: str
    doc_id: str
    chunk_index: int
    text: str | None
    metadata: dict[str, Any] | None
    score: float


class Sink(Protocol):
    """What the ingest loop needs from the replicas (:class:`pipeline.milvus.sink.MilvusSink` is one).

    ``write`` applies the writes in order, as if one by one, skipping the ones it reports in
    :attr:`WriteResult.rejected`; it raises a RetriableError when the same call may be retried.
    """

    def write(self, writes: Sequence[DocumentWrite]) -> WriteResult: ...
