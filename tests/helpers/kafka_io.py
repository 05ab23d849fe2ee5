"""Kafka in tests: producing records and awaiting every acknowledgement, reading a topic back to its end,
and a consumer group's committed offsets against the log end.

The readers never join the group (``assign``, no subscription), so they never trigger a rebalance of the
worker they are checking.  The log end is each partition's high watermark (``highwater()``: the Tansu
broker's ``end_offsets()`` is wrong on some partitions).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.ingest.kafka import client_options, make_producer
from pipeline.settings import KafkaSettings

# Room for the largest records the tests send (a 10 MiB hostile value).
_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Record:
    """One Kafka record as produced: key and value bytes (a None value is a tombstone)."""

    key: bytes | None
    value: bytes | None


async def produce(
    kafka: KafkaSettings, records: Iterable[Record], topic: str | None = None
) -> list[tuple[int, int]]:
    """Send ``records`` in order to ``topic`` (default ``kafka.topic``; per key the broker keeps that
    order) and wait for every acknowledgement; returns where each landed, as (partition, offset)."""
    producer = make_producer(kafka, max_request_size=16 * 1024 * 1024)
    await producer.start()
    try:
        sends = [await producer.send(topic or kafka.topic, key=r.key, value=r.value) for r in records]
        return [(sent.partition, sent.offset) for sent in await asyncio.gather(*sends)]
    finally:
        await producer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:  # a topic created since the client started: ask the broker again
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(partitions)]


async def read_topic(kafka: KafkaSettings, topic: str, rounds: int = 200) -> list[Any]:
    """Every record of ``topic`` up to each partition's high watermark; fails if it cannot get there."""
    consumer = AIOKafkaConsumer(**client_options(kafka), enable_auto_commit=False, fetch_max_bytes=_MAX_BYTES)
    await consumer.start()
    try:
        tps = await _partitions(consumer, topic)
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        positions = {tp: 0 for tp in tps}
        for _ in range(rounds):
            batch = await consumer.getmany(timeout_ms=300)
            for tp, rs in batch.items():
                records.extend(rs)
                positions[tp] = rs[-1].offset + 1
            ends = {tp: consumer.highwater(tp) for tp in tps}
            if all(end is not None and positions[tp] >= end for tp, end in ends.items()):
                break
        else:
            raise AssertionError(f"{topic}: did not reach the end of every partition")
        return records
    finally:
        await consumer.stop()


async def committed_and_end(kafka: KafkaSettings) -> dict[int, tuple[int | None, int | None]]:
    """Per partition of ``kafka.topic``: (``kafka.group_id``'s committed offset, the log end)."""
    consumer = AIOKafkaConsumer(**client_options(kafka), group_id=kafka.group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = await _partitions(consumer, kafka.topic)
        consumer.assign(tps)
        committed = {tp: await consumer.committed(tp) for tp in tps}
        await consumer.seek_to_beginning(*tps)
        for _ in range(50):  # the high watermark arrives with the first fetch response
            if all(consumer.highwater(tp) is not None for tp in tps):
                break
            await consumer.getmany(timeout_ms=200, max_records=1)
        return {tp.partition: (committed[tp], consumer.highwater(tp)) for tp in tps}
    finally:
        await consumer.stop()


async def assert_all_committed(kafka: KafkaSettings, what: str = "") -> dict[int, int]:
    """Assert that ``kafka.group_id`` committed every partition of ``kafka.topic`` (there is at least
    one) up to its log end (no commit counts as 0: an empty partition); returns the log ends."""
    positions = await committed_and_end(kafka)
    assert positions, f"{what}{kafka.topic}: no partitions"
    for partition, (committed, end) in positions.items():
        assert end is not None and (committed or 0) == end, (
            f"{what}partition {partition}: committed {committed}, log end {end}"
        )
    return {partition: end or 0 for partition, (_, end) in positions.items()}


class CommitWatcher:
    """Reads the worker group's committed offsets (sum over partitions) with one client."""

    def __init__(self, kafka: KafkaSettings) -> None:
        self._topic = kafka.topic
        self._consumer = AIOKafkaConsumer(
            **client_options(kafka), group_id=kafka.group_id, enable_auto_commit=False
        )

    async def __aenter__(self) -> CommitWatcher:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def total(self) -> int:
        tps = await _partitions(self._consumer, self._topic)
        return sum([(await self._consumer.committed(tp)) or 0 for tp in tps])

    async def wait_beyond(self, committed: int, alive: Callable[[], str | None], timeout_s: float) -> int:
        """Wait until the group committed past ``committed``; returns the total.

        ``alive()`` returns None while the worker runs, else why it stopped (fails the wait).
        """
        deadline = time.monotonic() + timeout_s
        while (total := await self.total()) <= committed:
            problem = alive()
            assert problem is None, problem
            assert time.monotonic() < deadline, f"no commit in {timeout_s:.0f}s"
            await asyncio.sleep(0.2)
        return total
