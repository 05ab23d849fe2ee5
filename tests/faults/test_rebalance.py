"""Scenario 5: rebalances under load.  Members join and leave one consumer group mid-stream
(1 → 3 → 2 in-process IngestWorkers sharing one Ray pool and Milvus Lite) while events keep
arriving: every replica ends exact, everything is committed, and no member ever commits a
partition it does not own (checked on a log of every commit and every revocation), nor does
any partition's committed offset ever move backwards.  A unit test with fakes pins the revoke
path itself: a write in flight is awaited before the partition is released, only its offsets
are committed, and units not yet written are neither written nor committed.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from helpers.fakes import FakeRecord, OnesEmbedder, WordSpans
from helpers.kafka_io import Record, assert_all_committed, committed_and_end, produce, read_topic
from helpers.oracle import SHORT_WORDS, StreamOracle, assert_exact
from helpers.settings import private_settings
from streams import fault_seed

from pipeline.documents import DocumentWrite, WriteResult
from pipeline.ingest.chunking import Chunker
from pipeline.ingest.consumer import IngestConsumer
from pipeline.runtime.assemble import build_runtime
from pipeline.settings import ConsumerSettings, KafkaSettings, Settings


def stream_part(rng: random.Random, oracle: StreamOracle, start: int, n: int) -> list[Record]:
    """``n`` more upserts and deletes over 150 ids, recorded in ``oracle``; returns them."""
    first = len(oracle.records)
    for seq in range(start, start + n):
        doc_id = f"r-{rng.randrange(150)}"
        if rng.random() < 0.15:
            oracle.delete(doc_id)
        else:
            oracle.upsert(
                doc_id, " ".join(rng.choice(SHORT_WORDS) for _ in range(rng.randint(4, 30))), {"seq": seq}
            )
    return oracle.records[first:]


@dataclass
class Event:
    kind: str  # "assigned" (after the callback), "revoked" (after the callback), "commit"
    member: str
    tps: frozenset[TopicPartition]
    offsets: dict[TopicPartition, int] | None = None


def instrument(worker: IngestConsumer, member: str, log: list[Event]) -> None:
    """Log ``worker``'s rebalance callbacks and successful commits, in the order they happen.

    A commit is logged at the position where it was *started* (the moment it was decided)."""
    consumer = worker._consumer
    real_commit, real_revoked, real_assigned = consumer.commit, worker._on_revoked, worker._on_assigned

    async def commit(offsets: dict[TopicPartition, int]) -> None:
        event = Event("commit", member, frozenset(offsets), None)
        log.append(event)
        try:
            await real_commit(offsets)
        except BaseException:
            log.remove(event)
            raise
        event.offsets = dict(offsets)

    async def on_revoked(revoked: set[TopicPartition]) -> None:
        await real_revoked(revoked)
        log.append(Event("revoked", member, frozenset(revoked)))

    async def on_assigned(assigned: set[TopicPartition]) -> None:
        await real_assigned(assigned)
        log.append(Event("assigned", member, frozenset(assigned)))

    consumer.commit = commit  # type: ignore[method-assign]
    worker._on_revoked = on_revoked  # type: ignore[method-assign]
    worker._on_assigned = on_assigned  # type: ignore[method-assign]


def check_commit_log(log: Sequence[Event]) -> dict[str, int]:
    """Every commit names only partitions its member owned when it started; committed offsets
    never go back.  Returns commits per member."""
    owned: dict[str, set[TopicPartition]] = {}
    last: dict[TopicPartition, int] = {}
    commits: dict[str, int] = {}
    for event in log:
        mine = owned.setdefault(event.member, set())
        if event.kind == "assigned":
            mine |= event.tps
        elif event.kind == "revoked":
            mine -= event.tps
        elif event.offsets is not None:
            assert event.tps <= mine, f"{event.member} committed {set(event.tps - mine)} it does not own"
            for tp, offset in event.offsets.items():
                assert offset >= last.get(tp, 0), f"{tp}: commit went back from {last[tp]} to {offset}"
                last[tp] = offset
            commits[event.member] = commits.get(event.member, 0) + 1
    return commits


async def _wait_for(condition: Any, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_members_join_and_leave_under_load_and_nothing_is_lost(
    kafka_bootstrap: str, milvus_lite_uri: str, minilm_path: Path, ray_session: None
) -> None:
    rng = random.Random(fault_seed(23))
    oracle = StreamOracle()
    settings = private_settings(
        kafka_bootstrap,
        milvus_lite_uri,
        minilm_path,
        name="rebalance",
        kafka={"partitions": 6},
        pool={"num_actors": 2},
        dims=(128,),
        max_tokens=64,
        consumer={
            "max_batch_events": 16,
            "max_inflight_tokens": 4096,  # each member holds a small backlog, so all three make progress
            "shutdown_drain_s": 5.0,
        },
    )
    runtime = await build_runtime(settings)
    log: list[Event] = []
    workers = {name: runtime.new_consumer() for name in ("a", "b", "c")}
    stops = {name: asyncio.Event() for name in workers}
    for name, worker in workers.items():
        instrument(worker, name, log)
    runs: dict[str, asyncio.Task[Any]] = {}
    try:
        await produce(settings.kafka, stream_part(rng, oracle, 0, 600))
        runs["a"] = asyncio.create_task(workers["a"].run(stop=stops["a"]))
        await _wait_for(lambda: workers["a"].stats.events >= 100, 120, "member a to start consuming")

        # 1 → 3, with events arriving while the group rebalances.
        runs["b"] = asyncio.create_task(workers["b"].run(stop=stops["b"]))
        runs["c"] = asyncio.create_task(workers["c"].run(stop=stops["c"]))
        await produce(settings.kafka, stream_part(rng, oracle, 600, 600))

        def split_three_ways() -> bool:  # every member holds partitions, together all 6, none twice
            owners = [w.assigned for w in workers.values()]
            return all(owners) and sum(map(len, owners)) == len(frozenset().union(*owners)) == 6

        await _wait_for(split_three_ways, 120, "the six partitions split among three members")

        # 3 → 2: c leaves mid-stream, once it has written and committed some of its share.
        # A commit alone is not enough: a member commits the first offset it holds before it wrote any.
        await _wait_for(lambda: workers["c"].stats.events > 0, 180, "member c to write some of its share")
        commits_then = workers["c"].stats.commits
        await _wait_for(lambda: workers["c"].stats.commits > commits_then, 60, "member c to commit them")
        produced = asyncio.create_task(produce(settings.kafka, stream_part(rng, oracle, 1200, 600)))
        stops["c"].set()
        await asyncio.wait_for(runs["c"], 120)
        await produced
        await _wait_for(
            lambda: len(workers["a"].assigned | workers["b"].assigned) == 6, 120, "a and b to take over"
        )

        async def all_committed() -> bool:
            return all(c == e for c, e in (await committed_and_end(settings.kafka)).values())

        deadline = time.monotonic() + 300
        while not await all_committed():
            assert time.monotonic() < deadline, "the group did not catch up"
            assert not any(t.done() for n, t in runs.items() if n != "c"), "a member stopped"
            await asyncio.sleep(1.0)
        for stop in stops.values():
            stop.set()
        stats = await asyncio.wait_for(asyncio.gather(*runs.values()), 120)

        assert all(s.events > 0 for s in stats), [s.events for s in stats]
        assert sum(s.dead_letters for s in stats) == 0
        commits = check_commit_log(log)
        assert set(commits) == {"a", "b", "c"}, commits
        # The joins and the leave took partitions away from members that held some.
        assert sum(e.kind == "revoked" and bool(e.tps) for e in log) >= 2
        await assert_all_committed(settings.kafka)
        dead = await read_topic(settings.kafka, settings.kafka.dlq_topic)
        await asyncio.to_thread(assert_exact, oracle, runtime.sink, dead, settings.kafka.topic)
    finally:
        for stop in stops.values():
            stop.set()
        for task in runs.values():
            if not task.done():
                task.cancel()
        await asyncio.gather(*runs.values(), return_exceptions=True)
        runtime.close()


# --- the revoke path, with fakes -------------------------------------------------------------


class GatedSink:
    """Blocks every write until ``gate`` is set; records the doc ids it applied."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.applied: list[str] = []

    def write(self, writes: Sequence[DocumentWrite]) -> WriteResult:
        self.started.set()
        assert self.gate.wait(10)
        self.applied.extend(w.doc_id for w in writes)
        return WriteResult(rejected={}, documents=len(writes), rows=len(writes))


class FakeConsumer:
    def __init__(self) -> None:
        self.commits: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    async def committed(self, tp: TopicPartition) -> int | None:
        return 100

    def assignment(self) -> set[TopicPartition]:
        return set()


async def test_revoke_awaits_the_write_in_flight_and_commits_only_what_it_acknowledged() -> None:
    settings = Settings(kafka=KafkaSettings(), consumer=ConsumerSettings(max_batch_events=2))
    sink = GatedSink()
    worker = IngestConsumer(settings, OnesEmbedder(), sink, Chunker(WordSpans(), 16), (4,))
    consumer = FakeConsumer()
    worker._consumer = consumer  # type: ignore[assignment]
    worker._fatal = asyncio.get_running_loop().create_future()
    tp = TopicPartition("docs", 0)
    await worker._on_assigned({tp})
    records = [
        FakeRecord(100 + i, f"d{i}".encode(), json.dumps({"id": f"d{i}", "text": "x y"}).encode())
        for i in range(6)
    ]
    await worker._dispatch(tp, records)  # three units of two events
    old_epoch = worker._lanes[tp].epoch
    await asyncio.to_thread(sink.started.wait, 10)  # the first unit's write is in Milvus now

    revoking = asyncio.create_task(worker._on_revoked({tp}))
    await asyncio.sleep(0.3)
    assert not revoking.done(), "the partition was released while a write for it was in flight"
    sink.gate.set()
    await asyncio.wait_for(revoking, 10)

    assert sink.applied == ["d0", "d1"]  # the write in flight finished; later units were dropped
    assert consumer.commits == [{tp: 102}]  # exactly the acknowledged prefix, before release
    assert worker.assigned == frozenset() and worker.inflight_units == 0
    # A late acknowledgement under the revoked epoch commits nothing.
    worker._tracker.ack(tp, old_epoch, [102, 103])
    await worker._commit()
    assert consumer.commits == [{tp: 102}]
