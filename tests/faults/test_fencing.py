"""Item 5 of issue 12: a member cut off from the broker while its writes are held back loses them
to the new owner of its partitions.

Two members of one group run in this process on the test's own broker, reached through a proxy
that can cut one member's connections (:class:`~member_proxy.MemberProxy`).  Member A ingests the
first version of 20 documents; then its Milvus writes are held (a gate in front of its own sink,
as when Milvus is unreachable from A's host) while it takes the second version, and it is cut from
the broker.  The group gives A's partitions to member B, which writes the second and a third
version and commits.  Only then are A's held writes let through: every replica must still hold
the third version, as the oracle says.  Before rows carried their source position, A's held
writes landed over B's and the replicas ended with the second version.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from harness import task_problem
from helpers.kafka_io import CommitWatcher, produce, read_topic
from helpers.oracle import StreamOracle, compare, random_text, read_replicas
from member_proxy import MemberProxy

from pipeline.documents import DocumentWrite, WriteResult
from pipeline.ingest.consumer import IngestConsumer
from pipeline.ingest.kafka import ensure_topics
from pipeline.milvus.sink import MilvusSink
from pipeline.ops import processes, services
from pipeline.ops.processes import ManagedProcess
from pipeline.runtime.assemble import build_runtime
from pipeline.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

IDS = [f"fenced-{i:02d}" for i in range(20)]


class HeldSink:
    """A's own sink: while ``open`` is clear every write waits in front of Milvus (its ids noted)."""

    def __init__(self, sink: MilvusSink) -> None:
        self.sink = sink
        self.open = threading.Event()
        self.open.set()
        self.held: set[str] = set()
        self.held_calls = 0
        self.results: list[WriteResult] = []

    @property
    def dims(self) -> tuple[int, ...]:
        return self.sink.dims

    def write(self, writes: Sequence[DocumentWrite]) -> WriteResult:
        if not self.open.is_set():
            self.held.update(w.doc_id for w in writes)
            self.held_calls += 1
            assert self.open.wait(300)
        result = self.sink.write(writes)
        self.results.append(result)
        return result


def version(oracle: StreamOracle, rng: random.Random, v: int) -> list[Any]:
    first = len(oracle.records)
    for doc_id in IDS:
        oracle.upsert(doc_id, f"version{v} " + random_text(rng, 2), {"v": v})
    return oracle.records[first:]


async def _until(
    condition: Callable[[], bool], alive: Callable[[], str | None], timeout_s: float, what: str
) -> float:
    started = time.monotonic()
    while not condition():
        assert alive() is None, alive()
        assert time.monotonic() - started < timeout_s, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def test_a_member_cut_from_the_broker_loses_its_held_writes_to_the_new_owner(
    make_settings: Callable[..., Settings],
    open_sink: Callable[[Settings], MilvusSink],
    milvus_lite_uri: str,
    ray_session: None,
    tmp_path: Path,
) -> None:
    broker_port, proxy_port = processes.free_port(), processes.free_port()
    proxy = MemberProxy((processes.HOST, proxy_port), (processes.HOST, broker_port))
    await proxy.start()
    broker: ManagedProcess | None = None
    runs: dict[str, asyncio.Task[Any]] = {}
    stops = {"a": asyncio.Event(), "b": asyncio.Event()}
    try:
        broker = await asyncio.to_thread(services.start_kafka, tmp_path / "kafka", broker_port, proxy_port)
        settings = make_settings(
            milvus_lite_uri,
            bootstrap=proxy.address,
            kafka={"session_timeout_ms": 3000, "heartbeat_interval_ms": 500, "partitions": 2},
            consumer={"max_batch_events": 64, "retry_backoff_max_s": 1.0},
        )
        kafka = settings.kafka
        rng = random.Random(5005)
        oracle = StreamOracle()
        await ensure_topics(kafka)
        runtime = await build_runtime(settings)
        held = HeldSink(MilvusSink(settings.milvus, runtime.dims))
        try:
            a = IngestConsumer(
                settings, runtime.pool, held, runtime.chunker, runtime.dims, runtime.special_tokens
            )
            a._consumer._client._client_id = "member-a"  # how the proxy tells A's connections apart
            runs["a"] = asyncio.create_task(a.run(stop=stops["a"]))
            alive_a = task_problem(runs["a"])
            await produce(kafka, version(oracle, rng, 1))
            async with CommitWatcher(kafka) as watcher:
                await watcher.wait_beyond(len(IDS) - 1, alive_a, 240)  # A wrote and committed version 1

                held.open.clear()  # A's writes wait in front of Milvus from now on
                written = len(held.results)
                await produce(kafka, version(oracle, rng, 2))
                await _until(lambda: held.held == set(IDS), alive_a, 120, "A's version-2 writes to be held")
                aborted = await proxy.cut_member("member-a")
                cut_at = time.monotonic()

                b = runtime.new_consumer()
                b._consumer._client._client_id = "member-b"
                runs["b"] = asyncio.create_task(b.run(stop=stops["b"]))
                alive_b = task_problem(runs["b"])
                await produce(kafka, version(oracle, rng, 3))
                # B takes the partitions once A is evicted, writes versions 2 and 3, commits all.
                await watcher.wait_beyond(len(oracle.records) - 1, alive_b, 240)
                taken_s = time.monotonic() - cut_at
                assert b.assigned and len(held.results) == written, "A wrote while held"
                before = compare(
                    oracle, await asyncio.to_thread(read_replicas, open_sink(settings)), [], kafka.topic
                )
                assert before.exact, f"B's writes: {before.summary()}"

                held.open.set()  # A's held writes go through now, after B's
                await _until(
                    lambda: len(held.results) - written >= held.held_calls, alive_a, 60, "A's held writes"
                )
                await asyncio.sleep(2.0)  # anything else A still had queued
            replicas = await asyncio.to_thread(read_replicas, open_sink(settings))
            verdict = compare(oracle, replicas, await read_topic(kafka, kafka.dlq_topic), kafka.topic)
            superseded = len(_superseded(held))
            print(
                f"\nA cut from the broker ({aborted} connections aborted, {proxy.refused} refused after); "
                f"B owned its partitions and committed all {taken_s:.1f}s after the cut; A's held writes "
                f"of {len(held.held)} documents let through: {superseded} superseded, "
                f"A stats {a.stats.documents_superseded} superseded; {verdict.summary()}"
            )
            assert verdict.exact, verdict.summary()
            assert held.held == _superseded(held) == set(IDS)
        finally:
            proxy.restore_member("member-a")
            held.open.set()
            for stop in stops.values():
                stop.set()
            for task in runs.values():
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(task, 60)
            held.sink.close()
            runtime.close()
    finally:
        await proxy.close()
        if broker is not None:
            broker.stop()


def _superseded(held: HeldSink) -> set[str]:
    return {doc_id for result in held.results for doc_id in result.superseded}
