"""From polled records to a unit of work: parse, dead-letter, collapse, chunk; then back to writes.

A :class:`WorkUnit` holds the records of one poll for one partition.  Within a unit
only the last event per document id that can be written matters (partition order), so the
others are set aside (as fallbacks) before anything is embedded.  Nothing here talks to Kafka, Ray or Milvus.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import numpy as np
from aiokafka import TopicPartition

from pipeline.documents import ChunkRow, DeleteDocument, DocumentWrite, SourcePosition, UpsertDocument
from pipeline.ingest.chunking import Chunk, Chunker, Frame
from pipeline.ingest.events import DocumentEvent, parse_event
from pipeline.ingest.reasons import InvalidEvent, ReasonCode
from pipeline.milvus.tenants import tenant_of
from workers.errors import PoisonInput
from workers.model.inputs import ModelInput, TokenizedText, text_of
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


def record_groups(
    records: Sequence[KafkaRecord], max_events: int, max_bytes: int
) -> Iterator[Sequence[KafkaRecord]]:
    """``records`` cut, in order, into consecutive groups of at most ``max_events`` records whose
    values sum to at most ``max_bytes`` (a larger record is a group of its own); every record lands
    in exactly one group."""
    start, size = 0, 0
    for index, record in enumerate(records):
        length = len(record.value or b"")
        if index > start and (index - start == max_events or size + length > max_bytes):
            yield records[start:index]
            start, size = index, 0
        size += length
    if start < len(records):
        yield records[start:]


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


Candidates = list[tuple[DocumentEvent, KafkaRecord]]
"""One id's events of a unit, oldest first."""

Split = list[Chunk] | PoisonInput
"""An event's chunks, or why it cannot be chunked."""


@dataclass
class _PlannedUpsert:
    event: DocumentEvent
    record: KafkaRecord
    chunks: list[str]
    first_text: int  # index of this document's first chunk in WorkUnit.texts
    earlier: Candidates  # the id's earlier events in the unit: the fallbacks if this one fails

    @property
    def doc_id(self) -> str:
        return self.event.id


@dataclass
class _PlannedDelete:
    doc_id: str
    record: KafkaRecord
    earlier: Candidates


@dataclass(frozen=True)
class _Planner:
    """Picks, for one id, the last of its events that can be chunked, and chunks it."""

    chunker: Chunker
    model: ModelSettings
    special_tokens: int

    def frame(self, event: DocumentEvent) -> Frame | None:
        """What the model sees around each chunk of ``event``: its instruction, if it has one.

        Chunks are cut with the instruction counted, so the model input never overflows."""
        return partial(format_input, self.model, instruction=event.instruction) if event.instruction else None

    def plan(self, unit: WorkUnit, candidates: Candidates, split: Split | None = None) -> int:
        """Plan the last event of ``candidates`` that can be chunked (a delete always can) into
        ``unit``; the later ones become dead letters, the earlier stay its fallbacks.  Returns the
        tokens of the texts added (none when no event could be planned).  ``split``: the last
        event's chunks (or why it cannot be chunked) where already cut."""
        while candidates:
            event, record = candidates.pop()
            if event.op == "delete":
                unit.plan.append(_PlannedDelete(event.id, record, candidates))
                return 0
            if split is None:
                split = self.chunker.split_many([(event.text or "", self.frame(event))])[0]
            chunks, split = split, None
            if isinstance(chunks, PoisonInput):  # characters, or an instruction, that fit no chunk
                unit.dead_letters.append(
                    _dead_letter(unit.tp, record, f"text cannot be chunked: {chunks}", ReasonCode.UNCHUNKABLE)
                )
                continue
            if not chunks:
                unit.dead_letters.append(
                    _dead_letter(unit.tp, record, "text has no tokens", ReasonCode.NO_TOKENS)
                )
                continue
            unit.plan.append(
                _PlannedUpsert(event, record, [c.text for c in chunks], len(unit.texts), candidates)
            )
            unit.texts.extend(self._model_input(c, event.instruction) for c in chunks)
            return sum(c.token_count + self.special_tokens for c in chunks)
        return 0

    def _model_input(self, chunk: Chunk, instruction: str | None) -> ModelInput:
        """What the model sees of ``chunk``: its (framed) text, with the ids the chunker counted."""
        text = format_input(self.model, chunk.text, instruction)
        return text if chunk.token_ids is None else TokenizedText(text, chunk.token_ids)


@dataclass
class WorkUnit:
    """One partition's slice of a poll, ready to embed; ``texts`` are what the model sees (each with
    its token ids where the chunker kept them).

    Per id only one event is planned: the last one in the unit that can be written.  When it
    turns out not to be (it cannot be chunked, crashes the embedder, or Milvus refuses it), it is
    dead-lettered and the id's previous event in the unit is planned instead, down to the first;
    so the replicas end as if every event had been applied one by one, wherever the unit
    boundaries fall.  Events superseded this way are never tried, so one of them that could not
    have been written is not dead-lettered either.
    """

    tp: TopicPartition
    epoch: int
    offsets: list[int]
    dead_letters: list[DeadLetter] = field(default_factory=list)
    plan: list[_PlannedUpsert | _PlannedDelete] = field(default_factory=list)
    texts: list[ModelInput] = field(default_factory=list)
    tokens: int = 0
    oldest_timestamp_ms: int | None = None
    parse_seconds: float = 0.0
    chunk_seconds: float = 0.0
    """Time :func:`build_unit` spent parsing the records, and chunking (and counting) the texts."""
    build_cpu_seconds: float = 0.0
    """CPU time of the thread that ran :func:`build_unit` meanwhile (parse and chunk): below their
    wall time when the thread waited for a core or the GIL."""
    planner: _Planner | None = field(default=None, repr=False)
    fallbacks: WorkUnit | None = field(default=None, repr=False)

    def writes(self, vectors: Mapping[int, np.ndarray]) -> list[DocumentWrite]:
        """The Milvus writes of this unit, one per planned id, given one vector row per text per dim;
        each carries the partition and offset of its event."""
        for dim, rows in vectors.items():
            if rows.shape[0] != len(self.texts):
                raise ValueError(f"dim {dim}: {rows.shape[0]} vectors for {len(self.texts)} texts")
        writes: list[DocumentWrite] = []
        for item in self.plan:
            source = SourcePosition(self.tp.partition, item.record.offset)
            if isinstance(item, _PlannedDelete):
                writes.append(DeleteDocument(item.doc_id, source))
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
                    source=source,
                )
            )
        return writes

    def reject(self, doc_id: str, reason: str, code: ReasonCode) -> None:
        """Move the planned event of ``doc_id`` from the plan to the dead letters (after its write
        was refused); its fallback, if any, is planned into :attr:`fallbacks`, to embed and write next."""
        for item in self.plan:
            if item.doc_id == doc_id:
                self.plan.remove(item)
                self.dead_letters.append(_dead_letter(self.tp, item.record, reason, code))
                if item.earlier:
                    if self.fallbacks is None:  # shares the dead letters: they are sent with this unit's
                        self.fallbacks = WorkUnit(
                            self.tp, self.epoch, [], self.dead_letters, planner=self.planner
                        )
                    # Its own tokens: they size its embedding requests (the flow never counted them).
                    self.fallbacks.tokens += self._plan_into(self.fallbacks, item.earlier)
                return
        raise KeyError(doc_id)

    def take_fallbacks(self) -> WorkUnit | None:
        """The unit of the fallbacks :meth:`reject` planned since the last call (None if none)."""
        fallbacks, self.fallbacks = self.fallbacks, None
        return fallbacks if fallbacks is not None and fallbacks.plan else None

    def reject_texts(self, poison: Collection[str], reason: str, code: ReasonCode) -> list[str]:
        """Move every document with a chunk input in ``poison`` to the dead letters, planning its
        fallback (if any) in its place; returns their ids.

        ``texts`` is rebuilt.  ``tokens`` is left as dispatched: it is what the consumer's
        in-flight accounting releases when the unit is done.
        """
        rejected: list[_PlannedUpsert] = []
        kept: list[_PlannedUpsert | _PlannedDelete] = []
        texts: list[ModelInput] = []
        for item in self.plan:
            if isinstance(item, _PlannedUpsert):
                inputs = self.texts[item.first_text : item.first_text + len(item.chunks)]
                if any(text_of(text) in poison for text in inputs):
                    self.dead_letters.append(_dead_letter(self.tp, item.record, reason, code))
                    rejected.append(item)
                    continue
                item.first_text = len(texts)
                texts.extend(inputs)
            kept.append(item)
        self.plan, self.texts = kept, texts
        for item in rejected:
            self._plan_into(self, item.earlier)
        return [item.event.id for item in rejected]

    def _plan_into(self, unit: WorkUnit, candidates: Candidates) -> int:
        if self.planner is None:
            raise RuntimeError("a unit not made by build_unit has no fallbacks to plan")
        return self.planner.plan(unit, candidates)


def _dead_letter(tp: TopicPartition, record: KafkaRecord, reason: str, code: ReasonCode) -> DeadLetter:
    return DeadLetter(tp.topic, tp.partition, record.offset, record.key, record.value, reason, code)


def build_unit(
    tp: TopicPartition,
    epoch: int,
    records: Sequence[KafkaRecord],
    chunker: Chunker,
    model: ModelSettings,
    special_tokens: int = 0,
    tenant_field: str | None = None,
) -> WorkUnit:
    """Parse ``records`` (one partition, increasing offsets) into a unit; bad events become dead
    letters, and of each id the last event that can be chunked is planned (see :class:`WorkUnit`).
    With ``tenant_field`` (``milvus.tenant_field``) an upsert without a usable tenant in its metadata is
    a bad event (``missing_tenant``), before anything is embedded."""
    planner = _Planner(chunker, model, special_tokens)
    unit = WorkUnit(tp=tp, epoch=epoch, offsets=[r.offset for r in records], planner=planner)
    if records:
        unit.oldest_timestamp_ms = min(r.timestamp for r in records)
    by_id: dict[str, Candidates] = {}
    started, cpu_started = time.perf_counter(), time.thread_time()
    for record in records:
        try:
            event = parse_event(record.key, record.value)
            if tenant_field is not None and event.op == "upsert":
                _check_tenant(event, tenant_field)
        except InvalidEvent as exc:
            unit.dead_letters.append(_dead_letter(tp, record, exc.reason, exc.code))
            continue
        candidates = by_id.pop(event.id, [])  # re-insert so dict order follows the id's last offset
        candidates.append((event, record))
        by_id[event.id] = candidates
    parsed = time.perf_counter()
    # Every id's last event is chunked in one batch (the tokenizer's calls run in parallel); an
    # earlier one only where the last cannot be written, one by one.
    last = {doc_id: c[-1][0] for doc_id, c in by_id.items() if c[-1][0].op == "upsert"}
    splits = chunker.split_many([(event.text or "", planner.frame(event)) for event in last.values()])
    split_of = dict(zip(last, splits, strict=True))
    for doc_id, candidates in by_id.items():
        unit.tokens += planner.plan(unit, candidates, split_of.get(doc_id))
    unit.build_cpu_seconds = time.thread_time() - cpu_started  # read first: within the wall time
    unit.parse_seconds, unit.chunk_seconds = parsed - started, time.perf_counter() - parsed
    return unit


def _check_tenant(event: DocumentEvent, tenant_field: str) -> None:
    try:
        tenant_of(event.metadata, tenant_field)
    except ValueError as exc:
        raise InvalidEvent(str(exc), ReasonCode.MISSING_TENANT) from exc
