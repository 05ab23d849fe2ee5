"""A lane: one assigned partition's units of work, from dispatch until written and acknowledged.

:class:`LaneRunner` moves the units of every lane of one consumer-group member
(:class:`~pipeline.ingest.consumer.IngestConsumer`, which opens and closes lanes on rebalances):

* Dispatch: records are cut into units in poll order (``consumer.max_batch_events`` events and
  ``consumer.max_unit_bytes`` bytes at most), queued on their lane in that order, and built
  (parsed and chunked) on a bounded thread pool (``consumer.chunk_threads``), several units of one
  lane and of several lanes at once; each unit's embedding starts as soon as it is built
  (concurrently, on any actor).  Its tokens count against the in-flight budget from then until it
  is written or dropped; at most twice ``chunk_threads`` units wait to be built, and dispatch
  waits (as the poll loop always waited for chunking) when that many do.
* Drain: the lane writes its units strictly in offset order, whatever order they were built in, so
  for one document id the last event in partition order wins in Milvus.
* Write: a unit's offsets are acknowledged to the
  :class:`~pipeline.ingest.offsets.OffsetTracker` only after every replica write and every dead-letter
  send of the unit succeeded (documents Milvus refuses for good become dead letters).  While a write
  is being retried nothing of the unit, nor after it in its partition, is acknowledged, and the
  partitions are paused (:mod:`pipeline.ingest.flow`).
  A document whose write Milvus refuses, or whose text crashes the embedder, falls back to its
  previous event in the unit (:class:`~pipeline.ingest.units.WorkUnit`), embedded and written next.
* Fencing: every write carries its events' positions, and a replica holding a newer write of a
  document leaves the older one out (:mod:`pipeline.milvus.positions`), so a member that lost
  its partition without knowing it (cut off from the broker, paused) and sends a held-back write
  after the new owner's loses.  Once it knows (the lane is closed), it sends nothing more.
* Close: bounded.  A Milvus call in flight is awaited (it cannot be recalled; each is bounded by
  ``milvus.timeout_s``) and a unit whose write returned is finished; a unit waiting between write
  attempts or on embeddings is abandoned at once and never sent again.  Units not written are
  dropped unacknowledged (the next owner re-reads them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from aiokafka import TopicPartition

from pipeline.documents import DocumentWrite, Sink, UpsertDocument, WriteResult
from pipeline.ingest import metrics
from pipeline.ingest.chunking import Chunker
from pipeline.ingest.consumer_stats import ConsumerStats
from pipeline.ingest.dlq import DeadLetterQueue
from pipeline.ingest.flow import FlowControl
from pipeline.ingest.offsets import OffsetTracker
from pipeline.ingest.reasons import ReasonCode
from pipeline.ingest.retry import retry_transient
from pipeline.ingest.unit_embedder import UnitEmbedder
from pipeline.ingest.units import KafkaRecord, WorkUnit, build_unit, record_groups
from pipeline.settings import Settings
from workers.errors import PipelineError

log = logging.getLogger(__name__)

Built = tuple[WorkUnit, "asyncio.Task[dict[int, np.ndarray]] | None"]
"""A unit once built, and its embedding under way (None when it has nothing to embed)."""


@dataclass
class Lane:
    """One assigned partition: its units in offset order, from dispatch until fully written.

    ``units`` holds, in offset order, one task per unit that builds it and starts its embedding."""

    tp: TopicPartition
    epoch: int
    units: deque[asyncio.Task[Built]] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    writing: asyncio.Task[None] | None = None
    sending: bool = False  # a Milvus call of ``writing`` is in flight, or it returned and is finishing
    revoked: bool = False  # closed: no new Milvus call may start


class LaneRevoked(PipelineError):
    """A write of a closed lane was about to be sent: the partition has another owner now."""


class LaneRunner:
    """Dispatches, drains and closes the lanes of one consumer; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        embedder: UnitEmbedder,
        sink: Sink,
        chunker: Chunker,
        dims: tuple[int, ...],
        special_tokens: int,
        dead_letters: DeadLetterQueue,
        tracker: OffsetTracker,
        latency: metrics.CommitLatency,
        flow: FlowControl,
        stats: ConsumerStats,
    ) -> None:
        self._settings = settings
        self._embedder = embedder
        self._sink = sink
        self._chunker = chunker
        self._dims = dims
        self._special_tokens = special_tokens
        self._dead_letters = dead_letters
        self._tracker = tracker
        self._latency = latency
        self._flow = flow
        self.stats = stats
        self._threads = threads = settings.consumer.chunk_threads or min(4, os.cpu_count() or 1)
        self._builders = ThreadPoolExecutor(threads, thread_name_prefix="chunk")
        self._building = asyncio.Semaphore(2 * threads)  # units submitted and not yet built

    async def dispatch(self, lane: Lane, records: Sequence[KafkaRecord]) -> None:
        """Cut ``records`` into units, track their offsets and queue them on the lane in offset order;
        each is built on the thread pool and its embedding started when built.  Waits while
        2 x ``chunk_threads`` units are being built; records of a lane closed meanwhile are dropped
        untracked (the next owner reads them)."""
        tp = lane.tp
        consumer = self._settings.consumer
        unit_bytes = consumer.unit_bytes(self._flow.budget)
        for part in record_groups(records, consumer.max_batch_events, unit_bytes):
            await self._building.acquire()
            if lane.revoked:
                self._building.release()
                return
            job = asyncio.wrap_future(
                self._builders.submit(
                    build_unit,
                    tp,
                    lane.epoch,
                    part,
                    self._chunker,
                    self._settings.model,
                    self._special_tokens,
                    self._settings.milvus.tenant_field,
                )
            )
            # Released when the unit is built, or its build cancelled (a queued one then never runs).
            job.add_done_callback(lambda _: self._building.release())
            offsets = [r.offset for r in part]
            self._tracker.track(tp, lane.epoch, offsets)
            self._latency.dispatched(tp, offsets[-1] + 1, [r.timestamp for r in part])
            self._flow.dispatched(0)  # its tokens once they are counted (_start)
            lane.units.append(
                asyncio.create_task(self._start(job), name=f"build-{tp.partition}-{offsets[0]}")
            )
            lane.arrived.set()

    async def _start(self, job: asyncio.Future[WorkUnit]) -> Built:
        unit = await job
        # Nothing awaits from here to the return: a unit whose tokens were counted is always
        # returned with its embedding (close relies on it).
        self.stats.add_stage_time("parse", unit.parse_seconds)
        self.stats.add_stage_time("chunk", unit.chunk_seconds)
        self.stats.add_cpu_time("build", unit.build_cpu_seconds)
        self._flow.chunked(unit.tokens, len(unit.offsets))
        embedding = asyncio.create_task(self._embed(unit)) if unit.texts else None
        return unit, embedding

    def shutdown(self) -> None:
        """Stop the build threads: builds not started are dropped (their lanes are closed by then).
        A fresh pool (its threads start on first use) serves a later run."""
        self._builders.shutdown(wait=False, cancel_futures=True)
        self._builders = ThreadPoolExecutor(self._threads, thread_name_prefix="chunk")

    async def drain(self, lane: Lane) -> None:
        """Write the lane's units in offset order; a unit is acknowledged once fully written."""
        while True:
            while not lane.units:
                lane.arrived.clear()
                await lane.arrived.wait()
            unit, embedding = await lane.units[0]  # built in any order, written in offset order
            vectors = await embedding if embedding is not None else {d: np.zeros((0, d)) for d in self._dims}
            # Shielded: once a write is sent to Milvus it must finish (and acknowledge) even
            # when the lane is cancelled by a rebalance; see close.
            lane.writing = asyncio.create_task(self._complete_unit(lane, unit, vectors))
            await asyncio.shield(lane.writing)
            lane.writing, lane.sending = None, False
            lane.units.popleft()
            self._release(unit.tokens)

    async def _complete_unit(self, lane: Lane, unit: WorkUnit, vectors: Mapping[int, np.ndarray]) -> None:
        chunks = await self._write_unit(lane, unit, vectors)
        lane.sending = True  # written: finish it (dead letters, acknowledgement) rather than drop it
        await self._dead_letters.send(unit.dead_letters)
        self.stats.dead_letters += len(unit.dead_letters)
        self._tracker.ack(unit.tp, unit.epoch, unit.offsets)
        self.stats.events += len(unit.offsets)
        metrics.unit_done(
            unit.tp.topic,
            len(unit.offsets),
            [d.code for d in unit.dead_letters],
            chunks,
        )
        self.stats.tokens_embedded += unit.tokens
        self.stats.last_ack_at = time.monotonic()

    def _release(self, tokens: int, *, written: bool = True) -> None:
        self._flow.released(tokens, written=written)

    async def _write_unit(self, lane: Lane, unit: WorkUnit, vectors: Mapping[int, np.ndarray]) -> int:
        """Write the unit to every replica; documents Milvus refuses for good become dead letters
        and their fallbacks are embedded and written next.  Returns the number of chunks written."""
        chunks = 0
        while True:
            chunks += await self._write_once(lane, unit, vectors)
            fallbacks = unit.take_fallbacks()
            if fallbacks is None:
                return chunks
            lane.sending = False  # nothing of the unit is in Milvus while its fallbacks are embedded
            vectors = await self._embed(fallbacks)
            unit = fallbacks

    async def _embed(self, unit: WorkUnit) -> dict[int, np.ndarray]:
        started = time.perf_counter()
        try:
            return await self._embedder.embed(unit)
        finally:
            self.stats.add_stage_time("embed", time.perf_counter() - started)

    async def _send(self, lane: Lane, writes: list[DocumentWrite]) -> WriteResult:
        """One attempt of a write, unless the lane was closed: then nothing is sent any more."""
        if lane.revoked:
            raise LaneRevoked(f"{lane.tp.topic}[{lane.tp.partition}] was revoked; its write is dropped")
        lane.sending = True
        started = time.perf_counter()
        cpu = [0.0]
        try:
            return await asyncio.to_thread(self._timed_write, writes, cpu)
        except Exception:
            lane.sending = False
            raise
        finally:
            self.stats.add_stage_time("write", time.perf_counter() - started)
            self.stats.add_cpu_time("write", cpu[0])

    def _timed_write(self, writes: list[DocumentWrite], cpu: list[float]) -> WriteResult:
        """``sink.write(writes)`` on the calling thread; its CPU time goes to ``cpu[0]``, which the event
        loop reads once the thread is done (so only the loop touches the stats; an await cancelled
        meanwhile, on a revocation, counts none of it)."""
        started = time.thread_time()
        try:
            return self._sink.write(writes)
        finally:
            cpu[0] = time.thread_time() - started

    async def _write_once(self, lane: Lane, unit: WorkUnit, vectors: Mapping[int, np.ndarray]) -> int:
        writes = unit.writes(vectors)
        if not writes:
            return 0
        # Nothing of this unit (nor after it in its partition) is acknowledged meanwhile, so
        # nothing is committed past it; the partitions are paused while it fails.
        result = await retry_transient(
            "Milvus write",
            lambda: self._send(lane, writes),
            self._settings.consumer.retry_backoff_max_s,
            on_failing=self._flow.write_failing,
            on_recovered=self._flow.write_recovered,
        )
        if result.superseded:
            log.warning(
                "%d document(s) of %s[%d] left alone: a replica holds a newer write (another owner's)",
                len(result.superseded),
                lane.tp.topic,
                lane.tp.partition,
            )
            self.stats.documents_superseded += len(result.superseded)
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

    async def close(self, lane: Lane, drain_s: float = 0.0) -> None:
        """Stop a lane, after up to ``drain_s`` seconds for its units to finish.

        Then no new Milvus call is started for it.  A call in flight is awaited (so it cannot land
        after the new owner's, as far as this member can tell) and a unit whose write returned is
        finished; a unit between write attempts (Milvus failing) or embedding its fallbacks is
        abandoned at once.  Units not written are dropped unacknowledged (the next owner re-reads them).
        """
        if lane.task is None:
            return
        deadline = time.monotonic() + drain_s
        while lane.units and not lane.task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        lane.task.cancel()
        lane.revoked = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await lane.task
        writing = lane.writing
        while writing is not None and not writing.done():
            if not lane.sending:  # nothing of it is in Milvus: abandon it now, not after its retries
                writing.cancel()
            await asyncio.wait([writing], timeout=0.05)
        if writing is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writing
        for built in lane.units:
            if not built.done():
                built.cancel()  # a unit still being built: its thread's result is never used
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await built
            if built.cancelled() or built.exception() is not None:
                self._release(0, written=False)  # its tokens were never counted
                continue
            unit, embedding = built.result()
            self._release(unit.tokens, written=False)
            if embedding is not None:
                embedding.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await embedding
        lane.units.clear()
