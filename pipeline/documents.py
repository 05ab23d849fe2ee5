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


@dataclass(frozen=True, order=True)
class SourcePosition:
    """Where a write comes from: the Kafka partition and offset of its event.

    Every row a write leaves carries it, so a replica knows how new each document is: a write
    older than what the replica holds for its document (same partition, lower offset) loses
    (:mod:`pipeline.milvus.positions`).  All events of an id share a key, hence a partition, so
    positions of one document are ordered by offset.
    """

    partition: int
    offset: int


@dataclass(frozen=True)
class UpsertDocument:
    """Replace every chunk of ``doc_id``; ``vectors[dim]`` has shape ``(len(chunks), dim)``.

    ``source``: the event it was made from; None (a tool's write) is never checked for staleness.
    """

    doc_id: str
    chunks: Sequence[ChunkRow]
    vectors: Mapping[int, np.ndarray]
    source: SourcePosition | None = None


@dataclass(frozen=True)
class DeleteDocument:
    """Remove every chunk of ``doc_id``; ``source`` as for :class:`UpsertDocument`."""

    doc_id: str
    source: SourcePosition | None = None


DocumentWrite = UpsertDocument | DeleteDocument


@dataclass(frozen=True)
class WriteResult:
    """Outcome of :meth:`Sink.write`.

    Every write not in ``rejected`` has been applied or superseded by a later write (of the same
    batch, or one a replica already holds: the documents of ``superseded``).
    """

    rejected: Mapping[int, PoisonInput]  # position in ``writes`` -> why Milvus can never take it
    documents: int  # documents whose final state was written (upserted or deleted)
    rows: int  # chunk rows upserted into each replica
    superseded: frozenset[str] = frozenset()  # left alone in a replica that holds a newer write


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
