"""Units are built (parsed, chunked) on ``consumer.chunk_threads`` threads at once, out of order, yet
written, acknowledged and committed strictly in offset order; the in-flight accounting stays exact
and a lane closed while units are still being built drops them cleanly."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Sequence

from aiokafka import TopicPartition
from helpers.fakes import CommitRecorder, FakeRecord, OnesEmbedder, WordSpans

from pipeline.documents import DocumentWrite, UpsertDocument, WriteResult
from pipeline.ingest.chunking import Chunker
from pipeline.ingest.consumer import IngestConsumer
from pipeline.settings import ConsumerSettings, KafkaSettings, Settings

TP = TopicPartition("docs", 0)
OTHER = TopicPartition("docs", 1)


class DelayedSpans(WordSpans):
    """Whitespace tokens; a text holding ``slowN`` takes N tenths of a second to tokenize.  Records
    the order texts finish in and how many are tokenized at once."""

    def __init__(self) -> None:
        self.finished: list[str] = []
        self.busy = self.most_busy = 0
        self._lock = threading.Lock()

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        with self._lock:
            self.busy += 1
            self.most_busy = max(self.most_busy, self.busy)
        for word in text.split():
            if word.startswith("slow"):
                time.sleep(int(word[4:]) / 10)
        with self._lock:
            self.busy -= 1
            self.finished.append(text.split()[0])
        return super().token_spans(text)


class RecordingSink:
    def __init__(self, gate: threading.Event | None = None) -> None:
        self.offsets: list[tuple[int, int]] = []  # (partition, offset) of every document written
        self.calls: list[list[int]] = []  # the offsets of each write call (one a unit here)
        self.gate = gate
        self.started = threading.Event()

    def write(self, writes: Sequence[DocumentWrite]) -> WriteResult:
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        written = [(w.source.partition, w.source.offset) for w in writes if isinstance(w, UpsertDocument)]
        self.offsets += written
        self.calls.append([offset for _, offset in written])
        return WriteResult(rejected={}, documents=len(writes), rows=len(writes))


async def _member(
    spans: DelayedSpans,
    sink: RecordingSink,
    threads: int,
    partitions: set[TopicPartition],
    **overrides: int,
) -> IngestConsumer:
    consumer = ConsumerSettings(**{"max_batch_events": 1, "chunk_threads": threads, **overrides})
    settings = Settings(kafka=KafkaSettings(), consumer=consumer)
    worker = IngestConsumer(settings, OnesEmbedder(), sink, Chunker(spans, 16), (4,))
    worker._consumer = CommitRecorder()  # type: ignore[assignment]
    worker._fatal = asyncio.get_running_loop().create_future()
    await worker._on_assigned(partitions)
    return worker


def _records(delays: Sequence[int]) -> list[FakeRecord]:
    """One event a record, document ``d{i}``, whose text takes ``delays[i]`` tenths to tokenize."""
    return [
        FakeRecord(i, f"d{i}".encode(), json.dumps({"id": f"d{i}", "text": f"d{i} slow{d} words"}).encode())
        for i, d in enumerate(delays)
    ]


async def _until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_units_built_out_of_order_are_written_and_committed_in_offset_order() -> None:
    spans, sink = DelayedSpans(), RecordingSink()
    worker = await _member(spans, sink, threads=4, partitions={TP})
    await worker._dispatch(TP, _records([6, 0, 3, 0, 0, 1]))  # the first unit is the slowest
    await _until(lambda: len(sink.offsets) == 6)
    assert spans.finished[0] != "d0" and spans.finished.index("d0") > spans.finished.index("d1")
    assert spans.most_busy > 1, "units were not built at once"
    assert sink.offsets == [(0, i) for i in range(6)]
    await worker._commit()
    assert worker._consumer.commits[-1] == {TP: 6}  # type: ignore[attr-defined]
    assert (worker._flow.tokens, worker.inflight_units) == (0, 0)
    worker._runner.shutdown()


async def test_no_offset_is_committed_past_a_unit_still_being_built() -> None:
    spans, sink = DelayedSpans(), RecordingSink()
    worker = await _member(spans, sink, threads=4, partitions={TP})
    await worker._dispatch(TP, _records([8, 0, 0]))
    # d1 and d2 are built on two threads at once, in either order, while d0 still sleeps.
    await _until(lambda: {"d1", "d2"} <= set(spans.finished))
    assert "d0" not in spans.finished, "d0 was built before the check (a stalled machine)"
    await worker._commit()
    assert worker._consumer.commits == [] and sink.offsets == []  # type: ignore[attr-defined]
    await _until(lambda: len(sink.offsets) == 3)
    await worker._commit()
    assert worker._consumer.commits == [{TP: 3}]  # type: ignore[attr-defined]
    worker._runner.shutdown()


async def test_units_of_several_lanes_are_built_at_once_each_lane_in_order() -> None:
    spans, sink = DelayedSpans(), RecordingSink()
    worker = await _member(spans, sink, threads=2, partitions={TP, OTHER})
    started = time.monotonic()
    await worker._dispatch(TP, _records([5, 1]))
    await worker._dispatch(OTHER, _records([5, 1]))
    await _until(lambda: len(sink.offsets) == 4)
    assert spans.most_busy == 2 and time.monotonic() - started < 1.8  # one thread: 1.2 s of sleeps
    assert [o for p, o in sink.offsets if p == 0] == [0, 1] and [o for p, o in sink.offsets if p == 1] == [
        0,
        1,
    ]
    worker._runner.shutdown()


async def test_units_are_cut_at_max_unit_bytes_as_well_as_at_max_batch_events() -> None:
    spans, sink = DelayedSpans(), RecordingSink()
    records = _records([0] * 7)
    size = len(records[0].value)  # every record's value has the same length
    worker = await _member(
        spans, sink, threads=2, partitions={TP}, max_batch_events=256, max_unit_bytes=2 * size + 1
    )
    await worker._dispatch(TP, records)
    await _until(lambda: len(sink.offsets) == 7)
    assert sink.calls == [[0, 1], [2, 3], [4, 5], [6]]
    await worker._commit()
    assert worker._consumer.commits[-1] == {TP: 7}  # type: ignore[attr-defined]
    worker._runner.shutdown()


async def test_dispatch_waits_while_twice_chunk_threads_units_are_being_built() -> None:
    spans, sink = DelayedSpans(), RecordingSink()
    worker = await _member(spans, sink, threads=1, partitions={TP})
    dispatching = asyncio.create_task(worker._dispatch(TP, _records([3, 3, 3, 0])))
    await asyncio.sleep(0.1)
    assert not dispatching.done() and len(worker._lanes[TP].units) == 2
    await asyncio.wait_for(dispatching, 5)
    await _until(lambda: len(sink.offsets) == 4)
    assert sink.offsets == [(0, i) for i in range(4)]
    worker._runner.shutdown()


async def test_a_lane_closed_while_units_are_being_built_drops_them_and_releases_everything() -> None:
    spans, gate = DelayedSpans(), threading.Event()
    sink = RecordingSink(gate)  # the first unit's write is held in flight
    worker = await _member(spans, sink, threads=2, partitions={TP})
    await worker._dispatch(TP, _records([0, 0, 5, 5, 5]))
    await _until(sink.started.is_set)
    revoking = asyncio.create_task(worker._on_revoked({TP}))
    await asyncio.sleep(0.2)
    gate.set()  # the write in flight finishes and is acknowledged; nothing after it is sent
    await asyncio.wait_for(revoking, 5)
    await asyncio.sleep(0.8)  # the builds still running finish: their units are never written
    assert sink.offsets == [(0, 0)]
    assert worker._consumer.commits == [{TP: 1}]  # type: ignore[attr-defined]
    assert (worker._flow.tokens, worker.inflight_units, worker.assigned) == (0, 0, frozenset())
    worker._runner.shutdown()
