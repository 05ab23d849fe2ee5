"""One member of the ingestion consumer group: poll Kafka, hand records to lanes, commit.

Each assigned partition has a lane (:mod:`pipeline.ingest.lane`) that embeds its units
concurrently and writes them strictly in offset order, so for one document id the last event in
partition order wins in Milvus.  Offsets are committed only after every replica write and every
dead-letter send of a unit: a lane acknowledges a unit only then, and only the contiguous
acknowledged prefix of a partition is committed (:class:`~pipeline.ingest.offsets.OffsetTracker`).

On a rebalance a revoked partition is given up only after its lane is closed (a Milvus call in
flight is awaited, a write waiting to be retried is abandoned and never sent) and what it
acknowledged is committed; acknowledgements under an old assignment never commit.  A member that
lost a partition without being told (cut off from the broker) is fenced by the replicas instead:
its writes carry their source positions and lose to a newer owner's
(:mod:`pipeline.milvus.positions`).  On shutdown the lanes get
``consumer.shutdown_drain_s`` to finish, then whatever was acknowledged is committed.

The poll loop never waits on the GPU or on Milvus: when the tokens in flight pass the in-flight
budget (``consumer.max_inflight_tokens``, or by default a few seconds of the measured rate), or
while a Milvus write is being retried, the assigned partitions are paused (the loop keeps polling,
so the consumer keeps its group membership) and resumed once that has cleared
(:mod:`pipeline.ingest.flow`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from pipeline.documents import Sink
from pipeline.ingest import decoding, metrics
from pipeline.ingest.chunking import Chunker
from pipeline.ingest.consumer_stats import ConsumerStats
from pipeline.ingest.decoding import DECODE_ERRORS
from pipeline.ingest.dlq import DLQ_HEADER_ROOM, DeadLetterQueue
from pipeline.ingest.flow import FlowControl
from pipeline.ingest.kafka import client_options, make_producer
from pipeline.ingest.lane import Lane, LaneRunner
from pipeline.ingest.offsets import OffsetTracker
from pipeline.ingest.unit_embedder import Embedder, UnitEmbedder
from pipeline.ingest.units import KafkaRecord
from pipeline.settings import Settings

log = logging.getLogger(__name__)


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
            self._producer,
            kafka.dlq_topic,
            settings.consumer.retry_backoff_max_s,
            kafka.dlq_max_record_bytes,
            kafka.dlq_retry_s,
        )
        self._tracker = OffsetTracker()
        self._latency = metrics.CommitLatency(kafka.topic)
        self._lanes: dict[TopicPartition, Lane] = {}
        self._flow = FlowControl(
            settings.consumer.max_inflight_tokens, inflight_seconds=settings.consumer.inflight_seconds
        )
        self._fatal: asyncio.Future[None] | None = None
        self._assigned_once = asyncio.Event()
        self._assigned_at = 0.0
        self.stats = ConsumerStats()
        unit_embedder = UnitEmbedder(
            embedder, dims, settings.consumer.max_request_tokens, settings.consumer.retry_backoff_max_s
        )
        self._runner = LaneRunner(
            settings,
            unit_embedder,
            sink,
            chunker,
            dims,
            special_tokens,
            self._dead_letters,
            self._tracker,
            self._latency,
            self._flow,
            self.stats,
        )

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

        On ``stop`` the lanes get ``consumer.shutdown_drain_s`` to finish their units.  Raises the
        first non-retriable error of any lane; work in flight is then abandoned uncommitted (it
        is re-consumed on restart).  A record batch that cannot be decoded (a codec library missing,
        a corrupt batch) raises :class:`~pipeline.ingest.decoding.UndecodableBatch` naming where.
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
                polled = time.perf_counter()
                try:
                    wanted = self._flow.records_wanted(self._settings.kafka.max_poll_records)
                    batches = await self._consumer.getmany(timeout_ms=100, max_records=wanted)
                except DECODE_ERRORS as exc:
                    raise await decoding.locate(self._consumer, exc) from exc
                if any(batches.values()):  # an empty poll waited on nothing but an idle topic
                    self.stats.add_stage_time("poll", time.perf_counter() - polled)
                if self.stats.first_record_at is None and any(batches.values()):
                    self.stats.first_record_at = time.monotonic()
                for tp, records in batches.items():
                    await self._dispatch(tp, records)
                self._flow.apply(self._consumer)
                self.stats.largest_inflight_budget = self._flow.largest_budget
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
        await self._runner.dispatch(lane, records)

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
        started = time.perf_counter()
        try:
            await self._consumer.commit(offsets)
        except KafkaError as exc:  # e.g. a rebalance in progress: the next round retries
            log.warning("commit of %s failed: %s", offsets, exc)
            return
        self.stats.add_stage_time("commit", time.perf_counter() - started)
        self._tracker.mark_committed(offsets)
        self._latency.committed(offsets)
        self.stats.commits += 1

    def _open_lane(self, tp: TopicPartition, committed: int | None) -> None:
        epoch = self._tracker.assign(tp, committed)
        self._latency.assigned(tp, committed)
        lane = Lane(tp=tp, epoch=epoch)
        lane.task = asyncio.create_task(self._runner.drain(lane), name=f"lane-{tp.topic}-{tp.partition}")
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
        """Give up ``tp``'s lane and close it (:meth:`~pipeline.ingest.lane.LaneRunner.close`: after up
        to ``drain_s`` seconds, a Milvus call in flight awaited, nothing sent after, the units not
        written dropped)."""
        lane = self._lanes.pop(tp, None)
        if lane is None or lane.task is None:
            return
        await self._runner.close(lane, drain_s)

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
        self._runner.shutdown()
        await self._commit()  # whatever was acknowledged is safe to commit, also after an error
        await self._consumer.stop()
        await self._producer.stop()


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, consumer: IngestConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._consumer._on_revoked(revoked)

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._consumer._on_assigned(assigned)
