"""The ingestion worker: poll Kafka, embed on the Ray pool, write every replica, then commit.

Flow per partition ("lane"): units are built in poll order and their embeddings start at
once (concurrently, on any actor); the lane then writes units strictly in offset order, so
for one document id the last event in partition order wins in Milvus.  A unit's offsets
are acknowledged only after every replica write and every dead-letter send of the unit
succeeded, and the :class:`~pipeline.ingest.offsets.OffsetTracker` commits the contiguous prefix.

The poll loop never waits on the GPU or on Milvus: when the tokens in flight pass
``worker.max_inflight_tokens``, or while a Milvus write is being retried, the assigned
partitions are paused (the loop keeps polling, so the consumer keeps its group membership)
and resumed once that has cleared (:mod:`pipeline.ingest.flow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from pipeline.documents import Sink, UpsertDocument
from pipeline.ingest import metrics
from pipeline.ingest.chunking import Chunker
from pipeline.ingest.dlq import DLQ_HEADER_ROOM, DeadLetterQueue
from pipeline.ingest.flow import FlowControl
from pipeline.ingest.kafka import client_options, make_producer
from pipeline.ingest.offsets import OffsetTracker
from pipeline.ingest.reasons import ReasonCode
from pipeline.ingest.retry import retry_transient
from pipeline.ingest.unit_embedder import Embedder, UnitEmbedder
from pipeline.ingest.units import KafkaRecord, WorkUnit, build_unit
from pipeline.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class ConsumerStats:
    """Counters of one worker run."""

    events: int = 0
    dead_letters: int = 0
    documents_written: int = 0
    documents_deleted: int = 0
    chunks_written: int = 0
    tokens_embedded: int = 0
    commits: int = 0
    first_record_at: float | None = None
    last_ack_at: float | None = None

    def busy_seconds(self) -> float:
        """Time from the first record polled to the last unit acknowledged."""
        if self.first_record_at is None or self.last_ack_at is None:
            return 0.0
        return self.last_ack_at - self.first_record_at

    def events_per_second(self) -> float:
        """Events fully handled per second while there was work."""
        return self.events / self.busy_seconds() if self.busy_seconds() > 0 else 0.0


@dataclass
class _Lane:
    """One assigned partition: its units in offset order, from dispatch until fully written."""

    tp: TopicPartition
    epoch: int
    units: deque[tuple[WorkUnit, asyncio.Task[dict[int, np.ndarray]] | None]] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    writing: asyncio.Task[None] | None = None


class IngestConsumer:
    """One member of the ingestion consumer group."""

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        sink: Sink,
        chunker: Chunker,
        dims: tuple[int, ...],
        special_tokens: int = 0,
    ) -> None:
        self._settings = settings
        self._embedder = UnitEmbedder(
            embedder, dims, settings.consumer.max_request_tokens, settings.consumer.retry_backoff_max_s
        )
        self._sink = sink
        self._chunker = chunker
        self._dims = dims
        self._special_tokens = special_tokens
        kafka = settings.kafka
        self._consumer = AIOKafkaConsumer(
            **client_options(kafka),
            group_id=kafka.group_id,
            enable_auto_commit=False,
            auto_offset_reset=kafka.auto_offset_reset,
            max_poll_records=kafka.max_poll_records,
            session_timeout_ms=kafka.session_timeout_ms,
            heartbeat_interval_ms=kafka.heartbeat_interval_ms,
        )
        self._producer = make_producer(kafka, max_request_size=kafka.dlq_max_record_bytes + DLQ_HEADER_ROOM)
        self._dead_letters = DeadLetterQueue(
            self._producer, kafka.dlq_topic, settings.consumer.retry_backoff_max_s, kafka.dlq_max_record_bytes
        )
        self._tracker = OffsetTracker()
        self._latency = metrics.CommitLatency(kafka.topic)
        self._lanes: dict[TopicPartition, _Lane] = {}
        self._flow = FlowControl(settings.consumer.max_inflight_tokens)
        self._fatal: asyncio.Future[None] | None = None
        self._assigned_once = asyncio.Event()
        self._assigned_at = 0.0
        self.stats = ConsumerStats()

    @property
    def assigned(self) -> frozenset[TopicPartition]:
        """The partitions this member currently owns."""
        return frozenset(self._lanes)

    @property
    def inflight_units(self) -> int:
        """Units dispatched and not yet written or dropped."""
        return self._flow.units

    @property
    def paused(self) -> bool:
        """Whether fetching is paused: the in-flight budget is full or a Milvus write is failing."""
        return self._flow.paused

    async def run(
        self, stop: asyncio.Event | None = None, until_idle_s: float | None = None
    ) -> ConsumerStats:
        """Consume until ``stop`` is set, or until nothing arrived for ``until_idle_s`` and all is committed.

        On ``stop`` the lanes get ``worker.shutdown_drain_s`` to finish their units.  Raises the
        first non-retriable error of any lane; work in flight is then abandoned uncommitted (it
        is re-consumed on restart).
        """
        stop = stop or asyncio.Event()
        self._fatal = asyncio.get_running_loop().create_future()
        await self._producer.start()
        await self._consumer.start()
        self._consumer.subscribe([self._settings.kafka.topic], listener=_Rebalance(self))
        committer = asyncio.create_task(self._commit_periodically(), name="committer")
        last_activity = time.monotonic()
        drain_s = self._settings.consumer.shutdown_drain_s
        try:
            while not stop.is_set():
                if self._fatal.done():
                    self._fatal.result()
                batches = await self._consumer.getmany(timeout_ms=100)
                if self.stats.first_record_at is None and any(batches.values()):
                    self.stats.first_record_at = time.monotonic()
                for tp, records in batches.items():
                    await self._dispatch(tp, records)
                self._flow.apply(self._consumer)
                busy = self._flow.units > 0 or not self._tracker.all_committed()
                if any(batches.values()) or busy or not self._assigned_once.is_set():
                    last_activity = time.monotonic()
                last_activity = max(last_activity, self._assigned_at)  # new partitions: not idle yet
                if until_idle_s is not None and time.monotonic() - last_activity >= until_idle_s:
                    break
            if self._fatal.done():
                self._fatal.result()
        except BaseException:
            drain_s = 0.0  # failed or cancelled: stop now, keep only what is acknowledged
            raise
        finally:
            committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await committer
            await self._shutdown(drain_s)
        return self.stats

    async def _dispatch(self, tp: TopicPartition, records: Sequence[KafkaRecord]) -> None:
        lane = self._lanes.get(tp)
        if lane is None:  # revoked between fetch and now: the new owner re-reads these
            return
        size = self._settings.consumer.max_batch_events
        for start in range(0, len(records), size):
            part = records[start : start + size]
            unit = await asyncio.to_thread(
                build_unit,
                tp,
                lane.epoch,
                part,
                self._chunker,
                self._settings.model,
                self._special_tokens,
            )
            self.stats.events += len(unit.offsets)
            self._tracker.track(tp, lane.epoch, unit.offsets)
            self._latency.dispatched(tp, unit.offsets[-1] + 1, [r.timestamp for r in part])
            embedding = asyncio.create_task(self._embedder.embed(unit)) if unit.texts else None
            self._flow.dispatched(unit.tokens)
            lane.units.append((unit, embedding))
            lane.arrived.set()

    async def _drain(self, lane: _Lane) -> None:
        """Write the lane's units in offset order; a unit is acknowledged once fully written."""
        while True:
            while not lane.units:
                lane.arrived.clear()
                await lane.arrived.wait()
            unit, embedding = lane.units[0]
            vectors = await embedding if embedding is not None else {d: np.zeros((0, d)) for d in self._dims}
            # Shielded: once a write is sent to Milvus it must finish (and acknowledge) even
            # when the lane is cancelled by a rebalance; see _close_lane.
            lane.writing = asyncio.create_task(self._complete_unit(unit, vectors))
            await asyncio.shield(lane.writing)
            lane.writing = None
            lane.units.popleft()
            self._release(unit)

    async def _complete_unit(self, unit: WorkUnit, vectors: Mapping[int, np.ndarray]) -> None:
        chunks = await self._write_unit(unit, vectors)
        await self._dead_letters.send(unit.dead_letters)
        self.stats.dead_letters += len(unit.dead_letters)
        self._tracker.ack(unit.tp, unit.epoch, unit.offsets)
        metrics.unit_done(
            unit.tp.topic,
            len(unit.offsets),
            [d.code for d in unit.dead_letters],
            chunks,
        )
        self.stats.tokens_embedded += unit.tokens
        self.stats.last_ack_at = time.monotonic()

    def _release(self, unit: WorkUnit) -> None:
        self._flow.released(unit.tokens)

    async def _write_unit(self, unit: WorkUnit, vectors: Mapping[int, np.ndarray]) -> int:
        """Write the unit to every replica; documents Milvus refuses for good become dead letters.

        Returns the number of chunks written.
        """
        writes = unit.writes(vectors)
        if not writes:
            return 0
        # Nothing of this unit (nor after it in its partition) is acknowledged meanwhile, so
        # nothing is committed past it; the partitions are paused while it fails.
        result = await retry_transient(
            "Milvus write",
            lambda: asyncio.to_thread(self._sink.write, writes),
            self._settings.consumer.retry_backoff_max_s,
            on_failing=self._flow.write_failing,
            on_recovered=self._flow.write_recovered,
        )
        rejected = result.rejected
        for index, reason in rejected.items():
            log.warning("document %r rejected by Milvus: %s", writes[index].doc_id, reason)
            unit.reject(writes[index].doc_id, f"rejected by Milvus: {reason}", ReasonCode.MILVUS_REJECTED)
        chunks = 0
        for index, write in enumerate(writes):
            if index in rejected:
                continue
            if isinstance(write, UpsertDocument):
                self.stats.documents_written += 1
                chunks += len(write.chunks)
            else:
                self.stats.documents_deleted += 1
        self.stats.chunks_written += chunks
        return chunks

    async def _commit_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._settings.consumer.commit_interval_s)
            await self._commit()
            self._latency.refresh_lag(self._consumer.highwater)

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        offsets = self._tracker.committable()
        if only is not None:
            offsets = {tp: o for tp, o in offsets.items() if tp in only}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:  # e.g. a rebalance in progress: the next round retries
            log.warning("commit of %s failed: %s", offsets, exc)
            return
        self._tracker.mark_committed(offsets)
        self._latency.committed(offsets)
        self.stats.commits += 1

    def _open_lane(self, tp: TopicPartition, committed: int | None) -> None:
        epoch = self._tracker.assign(tp, committed)
        self._latency.assigned(tp, committed)
        lane = _Lane(tp=tp, epoch=epoch)
        lane.task = asyncio.create_task(self._drain(lane), name=f"lane-{tp.topic}-{tp.partition}")
        lane.task.add_done_callback(self._on_lane_done)
        self._lanes[tp] = lane

    def _on_lane_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._fatal is None or self._fatal.done():
            return
        exc = task.exception()
        if exc is not None:
            log.error("lane %s failed: %r", task.get_name(), exc)
            self._fatal.set_exception(exc)

    async def _close_lane(self, tp: TopicPartition, drain_s: float = 0.0) -> None:
        """Stop a lane, after up to ``drain_s`` seconds for its units to finish.

        A write already sent to Milvus is awaited, so it cannot land after the new owner's;
        units not written by then are dropped unacknowledged (the next owner re-reads them).
        """
        lane = self._lanes.pop(tp, None)
        if lane is None or lane.task is None:
            return
        deadline = time.monotonic() + drain_s
        while lane.units and not lane.task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        lane.task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await lane.task
        if lane.writing is not None:
            with contextlib.suppress(Exception):
                await lane.writing
        for unit, embedding in lane.units:
            self._release(unit)
            if embedding is not None:
                embedding.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await embedding
        lane.units.clear()

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        for tp in revoked:
            await self._close_lane(tp)
        await self._commit(only=set(revoked))
        for tp in revoked:
            self._tracker.revoke(tp)
            self._latency.forget(tp)
        log.info("revoked %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in revoked))

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        for tp in assigned:
            if tp not in self._lanes:
                self._open_lane(tp, await self._consumer.committed(tp))
        self._flow.reassigned()
        self._assigned_at = time.monotonic()
        self._assigned_once.set()
        log.info("assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))

    async def _shutdown(self, drain_s: float) -> None:
        for tp in list(self._lanes):
            await self._close_lane(tp, drain_s)
        await self._commit()  # whatever was acknowledged is safe to commit, also after an error
        await self._consumer.stop()
        await self._producer.stop()


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, worker: IngestConsumer) -> None:
        self._worker = worker

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._worker._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._worker._on_assigned(assigned)
