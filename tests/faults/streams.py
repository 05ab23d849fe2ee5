"""Helpers shared by the fault scenarios 5–9: settings for a private topic, group and replica
set (with this scenario's model, replicas and worker bounds), producing records, reading a topic
back, committed offsets, and the check of every replica and the dead-letter topic against the
shared oracle of tests/faults/oracle.py.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord
from oracle import Record, StreamOracle, compare, read_replicas

from pipeline.config import (
    ChunkingSettings,
    EmbeddingSettings,
    KafkaSettings,
    MilvusSettings,
    Settings,
    WorkerSettings,
)
from pipeline.kafka import client_options, make_producer
from pipeline.sink import MilvusSink
from workers.settings import ModelSettings, PoolSettings


def fault_settings(
    bootstrap: str,
    milvus_uri: str,
    model_path: Path,
    *,
    dims: tuple[int, ...] = (128,),
    max_tokens: int = 64,
    partitions: int = 4,
    num_actors: int = 1,
    **worker: Any,
) -> Settings:
    """Settings on a private topic, group and collection prefix (so tests never share state)."""
    run = uuid.uuid4().hex[:8]
    return Settings(
        kafka=KafkaSettings(
            bootstrap_servers=bootstrap,
            topic=f"f-{run}",
            dlq_topic=f"f-{run}.dlq",
            group_id=f"g-{run}",
            partitions=partitions,
        ),
        model=ModelSettings(name_or_path=str(model_path)),
        pool=PoolSettings(num_actors=num_actors),
        embedding=EmbeddingSettings(dims=dims),
        chunking=ChunkingSettings(max_tokens=max_tokens),
        milvus=MilvusSettings(uri=milvus_uri, collection_prefix=f"f_{run}", index_type="FLAT"),
        worker=WorkerSettings(**({"commit_interval_s": 0.3} | worker)),
    )


async def produce(settings: Settings, records: Sequence[Record]) -> None:
    """Send ``records`` in order (per key, the broker keeps that order) and wait for every ack."""
    producer = make_producer(settings.kafka, max_request_size=16 * 1024 * 1024)
    await producer.start()
    try:
        futures = [await producer.send(settings.kafka.topic, key=r.key, value=r.value) for r in records]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def read_topic(settings: Settings, topic: str) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of ``topic`` (no group), up to each partition's high watermark."""
    consumer = AIOKafkaConsumer(
        **client_options(settings.kafka), enable_auto_commit=False, fetch_max_bytes=64 * 1024 * 1024
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[ConsumerRecord[bytes, bytes]] = []
        positions = {tp: 0 for tp in tps}
        for _ in range(200):
            batch = await consumer.getmany(timeout_ms=300)
            for tp, rs in batch.items():
                records.extend(rs)
                positions[tp] = rs[-1].offset + 1
            if all((hw := consumer.highwater(tp)) is not None and positions[tp] >= hw for tp in tps):
                break
        return records
    finally:
        await consumer.stop()


async def committed_and_end(settings: Settings) -> dict[int, tuple[int | None, int | None]]:
    """Per partition of the event topic: (the group's committed offset, the log end)."""
    consumer = AIOKafkaConsumer(
        **client_options(settings.kafka), group_id=settings.kafka.group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        topic = settings.kafka.topic
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        committed = {tp: await consumer.committed(tp) for tp in tps}
        await consumer.seek_to_beginning(*tps)
        for _ in range(50):
            if all(consumer.highwater(tp) is not None for tp in tps):
                break
            await consumer.getmany(timeout_ms=200, max_records=1)
        return {tp.partition: (committed[tp], consumer.highwater(tp)) for tp in tps}
    finally:
        await consumer.stop()


async def assert_all_committed(settings: Settings) -> None:
    for partition, (committed, end) in (await committed_and_end(settings)).items():
        assert committed == end, f"partition {partition}: committed {committed}, log end {end}"


def assert_exact(
    oracle: StreamOracle, sink: MilvusSink, dead_letters: Sequence[Any], source_topic: str
) -> None:
    """Every replica and the dead-letter topic equal the shared oracle (tests/faults/oracle.py)."""
    verdict = compare(oracle, read_replicas(sink), dead_letters, source_topic)
    assert verdict.exact, verdict.summary()


def dead_letter_reasons(dead: Sequence[ConsumerRecord[bytes, bytes]]) -> dict[tuple[Any, Any], str]:
    """(key, value) -> the ``error`` header of each dead letter."""
    return {(d.key, d.value): dict(d.headers)["error"].decode() for d in dead}
