"""Closing a lane is bounded and final: a write that keeps failing is abandoned at once (it used to
be retried forever while the revocation waited on it), a Milvus call in flight is awaited, and
after the close no attempt of the lane's writes is ever sent again."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence

from aiokafka import TopicPartition
from helpers.fakes import CommitRecorder, FakeRecord, OnesEmbedder, WordSpans

from pipeline.documents import DocumentWrite, WriteResult
from pipeline.ingest.chunking import Chunker
from pipeline.ingest.consumer import IngestConsumer
from pipeline.milvus.errors import SinkUnavailable
from pipeline.settings import ConsumerSettings, KafkaSettings, Settings

TP = TopicPartition("docs", 0)


class DownSink:
    """Milvus unreachable: every call fails (after ``gate`` opens, when one is set)."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.attempts = 0
        self.gate = gate
        self.started = threading.Event()

    def write(self, writes: Sequence[DocumentWrite]) -> WriteResult:
        self.attempts += 1
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        raise SinkUnavailable("connection refused", retry_after=0.2)


async def _member(sink: DownSink) -> tuple[IngestConsumer, CommitRecorder]:
    # Backoff up to 30 s: without the fence, a revocation waited for retries that never end.
    settings = Settings(
        kafka=KafkaSettings(), consumer=ConsumerSettings(max_batch_events=2, retry_backoff_max_s=30.0)
    )
    worker = IngestConsumer(settings, OnesEmbedder(), sink, Chunker(WordSpans(), 16), (4,))
    consumer = CommitRecorder()
    worker._consumer = consumer  # type: ignore[assignment]
    worker._fatal = asyncio.get_running_loop().create_future()
    await worker._on_assigned({TP})
    records = [FakeRecord(i, b"d", json.dumps({"id": "d", "text": f"v{i}"}).encode()) for i in range(4)]
    await worker._dispatch(TP, records)
    return worker, consumer


async def test_a_revocation_abandons_a_failing_write_and_it_is_never_sent_again() -> None:
    sink = DownSink()
    worker, consumer = await _member(sink)
    while sink.attempts < 3:  # Milvus down: retried with backoff
        await asyncio.sleep(0.05)
    await asyncio.wait_for(worker._on_revoked({TP}), 2.0)
    attempts = sink.attempts
    await asyncio.sleep(1.5)  # longer than the next backoff
    assert sink.attempts == attempts, "a write of a revoked lane was sent"
    assert consumer.commits == [] and worker.assigned == frozenset() and worker.inflight_units == 0


async def test_a_call_in_flight_is_awaited_then_nothing_more_is_sent() -> None:
    gate = threading.Event()
    sink = DownSink(gate)
    worker, _ = await _member(sink)
    await asyncio.to_thread(sink.started.wait, 10)
    revoking = asyncio.create_task(worker._on_revoked({TP}))
    await asyncio.sleep(0.3)
    assert not revoking.done(), "the partition was released while a Milvus call for it was in flight"
    gate.set()  # the call fails: its retries are not made
    await asyncio.wait_for(revoking, 2.0)
    await asyncio.sleep(1.0)
    assert sink.attempts == 1
