"""Reading Kafka back in tests: a whole topic up to its end, and a group's commits against the log end.

Both read without joining the group (``assign``, no subscription), so they never trigger a rebalance of
the worker they are checking.  The log end is each partition's high watermark (``highwater()``: the
Tansu broker's ``end_offsets()`` is wrong on some partitions).
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from pipeline.ingest.kafka import client_options
from pipeline.settings import KafkaSettings


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    partitions = consumer.partitions_for_topic(topic)
    if not partitions:  # a topic created since the client started: ask the broker again
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(partitions)]


async def read_topic(kafka: KafkaSettings, topic: str, rounds: int = 200) -> list[Any]:
    """Every record of ``topic`` up to each partition's high watermark; fails if it cannot get there."""
    # Room for the largest records the tests send (a 10 MiB hostile value).
    consumer = AIOKafkaConsumer(
        **client_options(kafka), enable_auto_commit=False, fetch_max_bytes=64 * 1024 * 1024
    )
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
