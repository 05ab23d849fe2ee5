"""The consumer loop against the real broker, with a fake embedder and a fake sink.

The fakes let us force what is hard to provoke with real components: embeddings finishing
out of order, Milvus failing for a while, a slow pool filling the in-flight budget, and a
lane crashing.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Sequence

import numpy as np
import pytest
from helpers.fakes import WordSpans
from helpers.kafka_io import Record, assert_all_committed, produce, read_topic
from helpers.settings import private_settings

from pipeline.documents import DeleteDocument, DocumentWrite, UpsertDocument, WriteResult
from pipeline.ingest.chunking import Chunker
from pipeline.ingest.consumer import IngestConsumer
from pipeline.ingest.kafka import ensure_topics, partition_lag
from pipeline.milvus.errors import SinkUnavailable
from pipeline.settings import Settings
from workers.errors import PoisonInput, PoisonTexts

DIMS = (8, 4)


class ShuffledEmbedder:
    """Deterministic vectors, returned after random delays so calls finish out of order."""

    def __init__(self, seed: int = 1, max_delay: float = 0.05) -> None:
        self._rng = random.Random(seed)
        self._max_delay = max_delay
        self.calls = 0

    async def embed(self, texts: list[str], dims: tuple[int, ...]) -> dict[int, np.ndarray]:
        self.calls += 1
        await asyncio.sleep(self._rng.uniform(0, self._max_delay))
        full = np.array([[float(len(t)), 1.0, *range(DIMS[0] - 2)] for t in texts], dtype=np.float32)
        return {d: full[:, :d] / np.linalg.norm(full[:, :d], axis=1, keepdims=True) for d in dims}


class RecordingSink:
    """Applies writes to a dict of live documents; can fail the first ``failures`` calls."""

    def __init__(self, failures: int = 0, crash: bool = False) -> None:
        self.documents: dict[str, list[str]] = {}
        self.calls = 0
        self._failures = failures
        self._crash = crash

    def write(self, writes: Sequence[DocumentWrite]) -> WriteResult:
        self.calls += 1
        if self._crash:
            raise RuntimeError("sink bug")
        if self.calls <= self._failures:
            raise SinkUnavailable("milvus is restarting", retry_after=0.05)
        for w in writes:
            if isinstance(w, UpsertDocument):
                assert all(v.shape == (len(w.chunks), d) for d, v in w.vectors.items())
                self.documents[w.doc_id] = [c.text for c in w.chunks]
            else:
                assert isinstance(w, DeleteDocument)
                self.documents.pop(w.doc_id, None)
        return WriteResult(rejected={}, documents=len(writes), rows=0)


def _settings(bootstrap: str, **consumer: object) -> Settings:
    return private_settings(bootstrap, max_tokens=16, consumer={"commit_interval_s": 0.2, **consumer})


async def _produce_stream(
    settings: Settings, n: int, seed: int = 3, expected: dict[str, str] | None = None
) -> dict[str, str]:
    """``n`` upserts/deletes over 40 ids; updates and returns ``expected`` (final text per live id)."""
    rng = random.Random(seed)
    expected = {} if expected is None else expected
    records = []
    for i in range(n):
        doc_id = f"d{rng.randrange(40)}"
        if rng.random() < 0.2:
            event: dict[str, str] = {"op": "delete", "id": doc_id}
            expected.pop(doc_id, None)
        else:
            text = " ".join(f"w{i}x{j}" for j in range(rng.randint(1, 50)))
            event = {"id": doc_id, "text": text}
            expected[doc_id] = text
        records.append(Record(doc_id.encode(), json.dumps(event).encode()))
    await ensure_topics(settings.kafka)
    await produce(settings.kafka, records)
    return expected


def _worker(settings: Settings, embedder: ShuffledEmbedder, sink: RecordingSink) -> IngestConsumer:
    return IngestConsumer(settings, embedder, sink, Chunker(WordSpans(), max_tokens=16), DIMS)


async def test_out_of_order_embeddings_still_apply_in_partition_order(kafka_bootstrap: str) -> None:
    settings = _settings(kafka_bootstrap, max_batch_events=7)
    expected = await _produce_stream(settings, 600)
    await produce(settings.kafka, [Record(b"x", bad) for bad in (b"not json", b"[1]", b'{"id": "x"}')])
    sink = RecordingSink()
    embedder = ShuffledEmbedder()
    stats = await _worker(settings, embedder, sink).run(until_idle_s=1.5)
    assert stats.events == 603 and stats.dead_letters == 3
    assert embedder.calls > 20  # many units were in flight at once
    assert {d: " ".join(chunks).split() for d, chunks in sink.documents.items()} == {
        d: t.split() for d, t in expected.items()
    }
    assert all(all(len(c.split()) <= 16 for c in chunks) for chunks in sink.documents.values())
    await assert_all_committed(settings.kafka)


async def test_sink_outage_is_retried_and_nothing_is_lost(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(kafka_bootstrap)
    expected = await _produce_stream(settings, 200, seed=5)
    sink = RecordingSink(failures=6)
    with caplog.at_level("INFO", logger="pipeline.ingest.flow"):
        await _worker(settings, ShuffledEmbedder(max_delay=0.0), sink).run(until_idle_s=1.5)
    assert sink.calls > 6
    assert any("the sink is failing" in r.getMessage() for r in caplog.records)  # fetching paused
    assert {d: " ".join(c).split() for d, c in sink.documents.items()} == {
        d: t.split() for d, t in expected.items()
    }
    await assert_all_committed(settings.kafka)


async def test_full_pipeline_pauses_partitions_and_still_finishes(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = _settings(kafka_bootstrap, max_inflight_tokens=64, max_batch_events=4)
    expected = await _produce_stream(settings, 150, seed=9)
    sink = RecordingSink()
    with caplog.at_level("INFO", logger="pipeline.ingest.flow"):
        await _worker(settings, ShuffledEmbedder(max_delay=0.03), sink).run(until_idle_s=1.5)
    assert any("tokens in flight" in r.getMessage() for r in caplog.records)
    assert {d: " ".join(c).split() for d, c in sink.documents.items()} == {
        d: t.split() for d, t in expected.items()
    }


async def test_a_crashing_lane_stops_the_worker_and_commits_nothing(kafka_bootstrap: str) -> None:
    settings = _settings(kafka_bootstrap)
    await _produce_stream(settings, 30, seed=11)
    with pytest.raises(RuntimeError, match="sink bug"):
        await asyncio.wait_for(
            _worker(settings, ShuffledEmbedder(), RecordingSink(crash=True)).run(until_idle_s=5), 60
        )
    lag = await partition_lag(settings.kafka, settings.kafka.topic)
    assert lag and all(committed == 0 for committed, _ in lag.values()), lag


async def test_stop_mid_stream_then_restart_loses_nothing(kafka_bootstrap: str) -> None:
    settings = _settings(kafka_bootstrap, max_batch_events=5, shutdown_drain_s=5.0)
    expected = await _produce_stream(settings, 300, seed=13)
    sink = RecordingSink()
    stop = asyncio.Event()
    first = _worker(settings, ShuffledEmbedder(max_delay=0.05), sink)
    running = asyncio.create_task(first.run(stop=stop))
    while sink.calls < 5:
        await asyncio.sleep(0.05)
    stop.set()
    stats = await asyncio.wait_for(running, 60)
    assert stats.documents_written + stats.documents_deleted > 0
    await _worker(settings, ShuffledEmbedder(max_delay=0.0), sink).run(until_idle_s=1.5)
    assert {d: " ".join(c).split() for d, c in sink.documents.items()} == {
        d: t.split() for d, t in expected.items()
    }
    await assert_all_committed(settings.kafka)


async def test_a_second_member_joining_mid_stream_loses_nothing(kafka_bootstrap: str) -> None:
    """A rebalance moves partitions while units are in flight; the final state is still exact."""
    settings = _settings(kafka_bootstrap, max_batch_events=3, max_inflight_tokens=64)
    expected = await _produce_stream(settings, 300, seed=17)
    sink = RecordingSink()  # shared: both members write to the same "Milvus"
    one = _worker(settings, ShuffledEmbedder(max_delay=0.1), sink)
    two = _worker(settings, ShuffledEmbedder(seed=2, max_delay=0.1), sink)
    first = asyncio.create_task(one.run(until_idle_s=6))
    while sink.calls < 3:
        await asyncio.sleep(0.05)
    second = asyncio.create_task(two.run(until_idle_s=6))
    while not (two.assigned and one.assigned):
        await asyncio.sleep(0.1)
    assert not (one.assigned & two.assigned)
    await _produce_stream(settings, 300, seed=19, expected=expected)  # reaches both members
    stats = await asyncio.wait_for(asyncio.gather(first, second), 180)
    assert stats[0].events > 0 and stats[1].events > 0
    assert {d: " ".join(c).split() for d, c in sink.documents.items()} == {
        d: t.split() for d, t in expected.items()
    }
    await assert_all_committed(settings.kafka)


class HugeEmojiWords(WordSpans):
    """Whitespace words, except that an emoji is 20 tokens on one character: more than a chunk holds."""

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [
            span
            for word in super().token_spans(text)
            for span in [word] * (20 if text[word[0]] == "😀" else 1)
        ]


class PoisonEmbedder(ShuffledEmbedder):
    """As ShuffledEmbedder, but a text holding "POISON" crashes the actors, as the pool reports it."""

    async def embed(self, texts: list[str], dims: tuple[int, ...]) -> dict[int, np.ndarray]:
        if poison := tuple(t for t in texts if "POISON" in t):
            raise PoisonTexts(poison, crashes=2)
        return await super().embed(texts, dims)


class RefusingSink(RecordingSink):
    """As RecordingSink, but Milvus refuses the document "refused" for good."""

    def write(self, writes: Sequence[DocumentWrite]) -> WriteResult:
        refused = {i: PoisonInput("row too large") for i, w in enumerate(writes) if w.doc_id == "refused"}
        result = super().write([w for w in writes if w.doc_id != "refused"])
        return WriteResult(rejected=refused, documents=result.documents, rows=result.rows)


async def test_each_kind_of_dead_letter_reaches_the_topic_with_its_own_reason_code(
    kafka_bootstrap: str,
) -> None:
    settings = _settings(kafka_bootstrap)
    await ensure_topics(settings.kafka)
    stream = {
        "blank": " \t\u200b ",
        "unchunkable": "smile 😀 please",
        "crash": "a POISON pill",
        "refused": "Milvus says no",
        "fine": "all good here",
    }
    records = [Record(d.encode(), json.dumps({"id": d, "text": t}).encode()) for d, t in stream.items()]
    await produce(settings.kafka, records)
    sink = RefusingSink()
    chunker = Chunker(HugeEmojiWords(), max_tokens=16)
    consumer = IngestConsumer(settings, PoisonEmbedder(), sink, chunker, DIMS)
    stats = await consumer.run(until_idle_s=1.5)
    assert stats.events == 5 and stats.dead_letters == 4 and set(sink.documents) == {"fine"}
    dead = await read_topic(settings.kafka, settings.kafka.dlq_topic)
    headers = {d.key.decode(): {k: v.decode() for k, v in d.headers} for d in dead}
    assert {doc: h["reason_code"] for doc, h in headers.items()} == {
        "blank": "blank_text",
        "unchunkable": "unchunkable",
        "crash": "embedder_crash",
        "refused": "milvus_rejected",
    }
    # The error header stays the prose, for people.
    assert headers["blank"]["error"].startswith("text is blank")
    assert headers["unchunkable"]["error"].startswith("text cannot be chunked")
    assert headers["crash"]["error"].startswith("embedding it crashed the embedder actor")
    assert headers["refused"]["error"] == "rejected by Milvus: row too large"
    await assert_all_committed(settings.kafka)
