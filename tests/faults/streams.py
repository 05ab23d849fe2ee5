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

from aiokafka.structs import ConsumerRecord
from kafka_reads import committed_and_end
from oracle import Record, StreamOracle, compare, read_replicas

from pipeline.ingest.kafka import make_producer
from pipeline.milvus.sink import MilvusSink
from pipeline.settings import (
    ChunkingSettings,
    ConsumerSettings,
    KafkaSettings,
    MilvusSettings,
    ReplicaSettings,
    Settings,
)
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
        replicas=ReplicaSettings(dims=dims),
        chunking=ChunkingSettings(max_tokens=max_tokens),
        milvus=MilvusSettings(uri=milvus_uri, collection_prefix=f"f_{run}", index_type="FLAT"),
        consumer=ConsumerSettings(**({"commit_interval_s": 0.3} | worker)),
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


async def assert_all_committed(settings: Settings) -> None:
    for partition, (committed, end) in (await committed_and_end(settings.kafka)).items():
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
