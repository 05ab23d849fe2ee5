"""From polled records to a unit of work: parse, dead-letter, collapse, chunk; then back to writes.

A :class:`WorkUnit` holds the records of one poll for one partition.  Within a unit
only the last event per document id matters (partition order), so earlier ones are
collapsed away before anything is embedded.  Nothing here talks to Kafka, Ray or Milvus.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np
from aiokafka import TopicPartition

from pipeline.documents import ChunkRow, DeleteDocument, DocumentWrite, UpsertDocument
from pipeline.ingest.chunking import Chunker
from pipeline.ingest.events import DocumentEvent, parse_event
from pipeline.ingest.reasons import InvalidEvent, ReasonCode
from workers.errors import PoisonInput
from workers.prompts import format_input
from workers.settings import ModelSettings


class KafkaRecord(Protocol):
    """The fields of an aiokafka ConsumerRecord this module reads."""

    @property
    def offset(self) -> int: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def timestamp(self) -> int: ...


@dataclass(frozen=True)
class DeadLetter:
    """An event that cannot be ingested, with everything needed to replay or inspect it.

    ``reason`` is the one-line prose for people; ``code`` is the rule it broke, set where the event
    was rejected (:mod:`pipeline.ingest.reasons`), for metrics and for programs reading the topic.
    """

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    reason: str
    code: ReasonCode

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers of the dead-letter record: ``error`` (the prose reason), ``reason_code``
        (the :class:`~pipeline.ingest.reasons.ReasonCode`) and where the event came from."""
        return [
            ("error", self.reason.encode("utf-8", "replace")),
            ("reason_code", self.code.value.encode()),
            ("source_topic", self.topic.encode()),
            ("source_partition", str(self.partition).encode()),
            ("source_offset", str(self.offset).encode()),
        ]


@dataclass
class _PlannedUpsert:
    event: DocumentEvent
    record: KafkaRecord
    chunks: list[str]
    first_text: int  # index of this document's first chunk in WorkUnit.texts


@dataclass
class _PlannedDelete:
    doc_id: str
    record: KafkaRecord


@dataclass
class WorkUnit:
    """One partition's slice of a poll, ready to embed; ``texts`` are what the model sees."""

    tp: TopicPartition
    epoch: int
    offsets: list[int]
    dead_letters: list[DeadLetter] = field(default_factory=list)
    plan: list[_PlannedUpsert | _PlannedDelete] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    tokens: int = 0
    oldest_timestamp_ms: int | None = None

    def writes(self, vectors: Mapping[int, np.ndarray]) -> list[DocumentWrite]:
        """The Milvus writes of this unit, in partition order, given one vector row per text per dim."""
        for dim, rows in vectors.items():
            if rows.shape[0] != len(self.texts):
                raise ValueError(f"dim {dim}: {rows.shape[0]} vectors for {len(self.texts)} texts")
        writes: list[DocumentWrite] = []
        for item in self.plan:
            if isinstance(item, _PlannedDelete):
                writes.append(DeleteDocument(item.doc_id))
                continue
            end = item.first_text + len(item.chunks)
            metadata: dict[str, Any] = dict(item.event.metadata)
            chunk_rows = [
                ChunkRow(doc_id=item.event.id, chunk_index=i, text=text, metadata=metadata)
                for i, text in enumerate(item.chunks)
            ]
            writes.append(
                UpsertDocument(
                    doc_id=item.event.id,
                    chunks=chunk_rows,
                    vectors={dim: arr[item.first_text : end] for dim, arr in vectors.items()},
                )
            )
        return writes

    def reject(self, doc_id: str, reason: str, code: ReasonCode) -> None:
        """Move the surviving event of ``doc_id`` from the plan to the dead letters."""
        for item in self.plan:
            if (item.doc_id if isinstance(item, _PlannedDelete) else item.event.id) == doc_id:
                self.plan.remove(item)
                self.dead_letters.append(_dead_letter(self.tp, item.record, reason, code))
                return
        raise KeyError(doc_id)

    def reject_texts(self, poison: Collection[str], reason: str, code: ReasonCode) -> list[str]:
        """Move every document with a chunk input in ``poison`` to the dead letters; returns their ids.

        ``texts`` is rebuilt without them.  ``tokens`` is left as dispatched: it is what the
        consumer's in-flight accounting releases when the unit is done.
        """
        rejected: list[str] = []
        kept: list[_PlannedUpsert | _PlannedDelete] = []
        texts: list[str] = []
        for item in self.plan:
            if isinstance(item, _PlannedUpsert):
                inputs = self.texts[item.first_text : item.first_text + len(item.chunks)]
                if any(text in poison for text in inputs):
                    self.dead_letters.append(_dead_letter(self.tp, item.record, reason, code))
                    rejected.append(item.event.id)
                    continue
                item.first_text = len(texts)
                texts.extend(inputs)
            kept.append(item)
        self.plan, self.texts = kept, texts
        return rejected


def _dead_letter(tp: TopicPartition, record: KafkaRecord, reason: str, code: ReasonCode) -> DeadLetter:
    return DeadLetter(tp.topic, tp.partition, record.offset, record.key, record.value, reason, code)


def build_unit(
    tp: TopicPartition,
    epoch: int,
    records: Sequence[KafkaRecord],
    chunker: Chunker,
    model: ModelSettings,
    special_tokens: int = 0,
) -> WorkUnit:
    """Parse ``records`` (one partition, increasing offsets) into a unit; bad events become dead letters."""
    unit = WorkUnit(tp=tp, epoch=epoch, offsets=[r.offset for r in records])
    if records:
        unit.oldest_timestamp_ms = min(r.timestamp for r in records)
    last: dict[str, tuple[DocumentEvent, KafkaRecord]] = {}
    for record in records:
        try:
            event = parse_event(record.key, record.value)
        except InvalidEvent as exc:
            unit.dead_letters.append(_dead_letter(tp, record, exc.reason, exc.code))
            continue
        last.pop(event.id, None)  # re-insert so dict order follows the surviving event's offset
        last[event.id] = (event, record)
    for event, record in last.values():
        if event.op == "delete":
            unit.plan.append(_PlannedDelete(event.id, record))
            continue
        frame = partial(format_input, model, instruction=event.instruction) if event.instruction else None
        try:
            # Chunks are cut with the instruction counted, so the model input never overflows.
            chunks = chunker.split(event.text or "", frame)
        except PoisonInput as exc:  # characters, or an instruction, the tokenizer cannot fit in one chunk
            reason = f"text cannot be chunked: {exc}"
            unit.dead_letters.append(_dead_letter(tp, record, reason, ReasonCode.UNCHUNKABLE))
            continue
        if not chunks:
            unit.dead_letters.append(_dead_letter(tp, record, "text has no tokens", ReasonCode.NO_TOKENS))
            continue
        unit.plan.append(_PlannedUpsert(event, record, [c.text for c in chunks], len(unit.texts)))
        for chunk in chunks:
            unit.texts.append(format_input(model, chunk.text, event.instruction))
            unit.tokens += chunk.token_count + special_tokens
    return unit
