"""A unit plans, per id, the last event that can be written; when that one fails (cannot be
chunked, crashes the embedder, refused by Milvus) the id's previous event in the unit is written
instead.  So, wherever the unit boundaries fall, the replicas hold what applying the partition's
events one by one gives (the oracle below), and every event that failed is dead-lettered."""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from aiokafka import TopicPartition
from helpers.fakes import FakeRecord

from pipeline.documents import DeleteDocument, DocumentWrite, SourcePosition, UpsertDocument, WriteResult
from pipeline.ingest.chunking import Chunker
from pipeline.ingest.consumer import IngestConsumer
from pipeline.ingest.reasons import ReasonCode
from pipeline.ingest.units import build_unit
from pipeline.settings import ConsumerSettings, KafkaSettings, Settings
from workers.errors import PoisonInput, PoisonTexts
from workers.settings import ModelSettings

TP = TopicPartition("docs", 0)
EMOJI = "😀"  # four tokens that must stay together: a chunk of three cannot hold it


class EmojiAsFourTokens:
    def token_spans(self, text: str) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        for m in re.finditer(r"\S+", text):
            spans.extend([m.span()] * (4 if m.group() == EMOJI else 1))
        return spans


class PoisonPool:
    """Ones for every text; a request with a "POISON" text fails as the pool reports a crash."""

    async def embed(self, texts: list[str], dims: tuple[int, ...]) -> dict[int, np.ndarray]:
        if poison := tuple(t for t in texts if "POISON" in t):
            raise PoisonTexts(poison, crashes=2)
        return {d: np.ones((len(texts), d), dtype=np.float32) for d in dims}


class RefusingSink:
    """Live documents as their joined chunk texts; refuses (for good) an upsert whose metadata
    says so, and then applies the document's previous write of the batch, as MilvusSink does."""

    def __init__(self) -> None:
        self.documents: dict[str, str] = {}

    def write(self, writes: Sequence[DocumentWrite]) -> WriteResult:
        rejected: dict[int, PoisonInput] = {}
        for index, w in enumerate(writes):
            if isinstance(w, UpsertDocument) and w.chunks[0].metadata.get("refuse"):
                rejected[index] = PoisonInput(f"{w.doc_id}: refused")
            elif isinstance(w, UpsertDocument):
                self.documents[w.doc_id] = " ".join(c.text for c in w.chunks)
            else:
                assert isinstance(w, DeleteDocument)
                self.documents.pop(w.doc_id, None)
        return WriteResult(rejected=rejected, documents=len(writes) - len(rejected), rows=0)


def stream(seed: int, n: int) -> list[FakeRecord]:
    """Events of 4 ids: good upserts, deletes, and upserts that fail at each stage."""
    rng = random.Random(seed)
    records = []
    for offset in range(n):
        doc_id = f"id-{rng.randrange(4)}"
        kind = rng.choice(["ok", "ok", "delete", "unchunkable", "poison", "refused"])
        words = " ".join(rng.choice(["alpha", "beta", "gamma"]) for _ in range(rng.randint(1, 5)))
        event: dict[str, Any] = {"id": doc_id, "text": f"{words} v{offset}"}
        if kind == "delete":
            event = {"op": "delete", "id": doc_id}
        elif kind == "unchunkable":
            event["text"] += f" {EMOJI}"
        elif kind == "poison":
            event["text"] += " POISON"
        elif kind == "refused":
            event["metadata"] = {"refuse": True}
        records.append(FakeRecord(offset, doc_id.encode(), json.dumps(event).encode()))
    return records


def one_by_one(records: Sequence[FakeRecord]) -> tuple[dict[str, str], set[int]]:
    """The oracle: each event applied alone; returns the live documents and the dead-lettered offsets."""
    documents: dict[str, str] = {}
    dead: set[int] = set()
    for record in records:
        assert record.value is not None
        event = json.loads(record.value)
        if event.get("op") == "delete":
            documents.pop(event["id"], None)
        elif EMOJI in event["text"] or "POISON" in event["text"] or event.get("metadata"):
            dead.add(record.offset)
        else:
            documents[event["id"]] = event["text"]
    return documents, dead


class FakeConsumer:
    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        pass

    async def committed(self, tp: TopicPartition) -> int | None:
        return 0


async def consume(records: Sequence[FakeRecord], unit_events: int) -> tuple[dict[str, str], list[int]]:
    """Run ``records`` through one member's lane with units of ``unit_events`` events; returns the
    sink's documents and the offsets dead-lettered."""
    settings = Settings(kafka=KafkaSettings(), consumer=ConsumerSettings(max_batch_events=unit_events))
    sink = RefusingSink()
    worker = IngestConsumer(settings, PoisonPool(), sink, Chunker(EmojiAsFourTokens(), 3), (4,))
    worker._consumer = FakeConsumer()  # type: ignore[assignment]
    worker._fatal = asyncio.get_running_loop().create_future()
    sent: list[int] = []

    async def send(dead_letters: Sequence[Any]) -> None:
        sent.extend(d.offset for d in dead_letters)

    worker._dead_letters.send = send  # type: ignore[method-assign]
    await worker._on_assigned({TP})
    await worker._dispatch(TP, records)
    for _ in range(500):
        if worker.inflight_units == 0 and worker._tracker.committable().get(TP) == len(records):
            break
        assert not worker._fatal.done(), worker._fatal
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the units were not all written")
    await worker._on_revoked({TP})
    return sink.documents, sent


@pytest.mark.parametrize("seed", range(6))
async def test_replicas_equal_applying_events_one_by_one_wherever_units_are_cut(seed: int) -> None:
    records = stream(seed, 60)
    documents, dead = one_by_one(records)
    for unit_events in (1, 2, 3, 7, 60):
        written, sent = await consume(records, unit_events)
        assert written == documents, f"units of {unit_events}"
        # Every event that failed was dead-lettered once; superseded ones were never tried.
        assert len(sent) == len(set(sent)) and set(sent) <= dead, f"units of {unit_events}"
        if unit_events == 1:
            assert set(sent) == dead


def _rec(offset: int, **event: object) -> FakeRecord:
    return FakeRecord(offset, str(event["id"]).encode(), json.dumps(event).encode())


def test_an_unchunkable_last_event_falls_back_to_the_delete_before_it() -> None:
    records = [
        _rec(0, id="a", text="first"),
        _rec(1, op="delete", id="a"),
        _rec(2, id="a", text=f"smile {EMOJI}"),
        _rec(3, id="b", text="kept"),
    ]
    unit = build_unit(TP, 0, records, Chunker(EmojiAsFourTokens(), 3), ModelSettings())
    assert [(d.offset, d.code) for d in unit.dead_letters] == [(2, ReasonCode.UNCHUNKABLE)]
    writes = unit.writes({4: np.ones((1, 4), dtype=np.float32)})
    assert [(type(w).__name__, w.doc_id, w.source) for w in writes] == [
        ("DeleteDocument", "a", SourcePosition(0, 1)),  # the delete, from its own position
        ("UpsertDocument", "b", SourcePosition(0, 3)),
    ]


def test_a_refused_write_falls_back_to_a_unit_of_the_earlier_events() -> None:
    records = [
        _rec(0, id="a", text="one"),
        _rec(1, id="a", text="two", metadata={"refuse": True}),
        _rec(2, id="a", text="three", metadata={"refuse": True}),
    ]
    unit = build_unit(TP, 0, records, Chunker(EmojiAsFourTokens(), 3), ModelSettings())
    assert unit.texts == ["three"]
    unit.reject("a", "refused", ReasonCode.MILVUS_REJECTED)
    assert unit.plan == []
    fallbacks = unit.take_fallbacks()
    assert fallbacks is not None and fallbacks.texts == ["two"] and unit.take_fallbacks() is None
    fallbacks.reject("a", "refused", ReasonCode.MILVUS_REJECTED)
    last = fallbacks.take_fallbacks()
    assert last is not None and last.texts == ["one"] and last.take_fallbacks() is None
    (write,) = last.writes({4: np.ones((1, 4), dtype=np.float32)})
    assert write.source == SourcePosition(0, 0)
    assert [d.offset for d in unit.dead_letters] == [2, 1]  # one list: sent with the unit
