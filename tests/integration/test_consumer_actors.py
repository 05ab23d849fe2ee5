"""Consumers as Ray actors on the session's cluster: two group members, one killed mid-stream; Ray
restarts it, it rejoins and nothing is lost (every partition committed to its end, every document
in Milvus once)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest
import ray

from pipeline.ingest.kafka import make_producer, partition_lag
from pipeline.runtime.assemble import build_runtime
from pipeline.runtime.consumer_actors import run_consumer_actors, start_consumer_actors
from pipeline.settings import (
    ChunkingSettings,
    ConsumerSettings,
    KafkaSettings,
    MilvusSettings,
    RaySettings,
    ScalingSettings,
    Settings,
)
from workers.settings import ModelSettings, PoolSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

DOCUMENTS = 400


async def send_documents(settings: Settings, numbers: range) -> None:
    """Produce ``doc-{i}`` for each of ``numbers``."""
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        sends = [
            await producer.send(
                settings.kafka.topic,
                key=f"doc-{i}".encode(),
                value=json.dumps({"id": f"doc-{i}", "text": f"Document {i} on consumer actors."}).encode(),
            )
            for i in numbers
        ]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


async def test_a_killed_consumer_actor_is_restarted_and_nothing_is_lost(
    kafka_bootstrap: str, milvus_lite_uri: str, minilm_path: Path, ray_session: None
) -> None:
    run = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka=KafkaSettings(
            bootstrap_servers=kafka_bootstrap,
            topic=f"ca-{run}",
            dlq_topic=f"ca-{run}.dlq",
            group_id=f"ca-{run}",
            partitions=4,
            max_poll_records=20,
        ),
        model=ModelSettings(name_or_path=str(minilm_path)),
        pool=PoolSettings(num_actors=1, cpus_per_actor=1, detached=False),
        chunking=ChunkingSettings(max_tokens=64),
        milvus=MilvusSettings(uri=milvus_lite_uri, collection_prefix=f"ca_{run}", index_type="FLAT"),
        ray=RaySettings(namespace=f"ca-{run}"),
        scaling=ScalingSettings(consumer_cpus=0.25),
        consumer=ConsumerSettings(commit_interval_s=0.3, max_batch_events=10),
    )
    runtime = await build_runtime(settings)
    try:
        await send_documents(settings, range(DOCUMENTS // 2))
        actors = start_consumer_actors(runtime, 2)
        running = asyncio.create_task(
            run_consumer_actors(runtime, 2, asyncio.Event(), until_idle_s=4.0, actors=actors)
        )
        # Once the group has committed something, the second half arrives and consumer-0 is killed
        # with it still to do (the whole stream can be done before the first commit shows).
        for _ in range(600):
            lag = await partition_lag(settings.kafka, settings.kafka.topic)
            committed = sum(c for c, _ in lag.values())
            if committed > 0 or running.done():
                break
            await asyncio.sleep(0.1)
        assert not running.done() and committed > 0, "nothing committed, or the members stopped"
        await send_documents(settings, range(DOCUMENTS // 2, DOCUMENTS))
        ray.kill(ray.get_actor("consumer-0", namespace=settings.ray.namespace), no_restart=False)
        stats = await running
        # The killed process's counters died with it; the survivors and the restarted member counted
        # the rest, including what it re-read (uncommitted when it died).
        assert stats.events > 0
        # Each member's figures as it measured them (the restarted one: its last run only).
        assert len(stats.members) == 2 and stats.events == sum(m.events for m in stats.members)
        assert stats.busiest_member_seconds() == max(m.busy_seconds() for m in stats.members) > 0

        lag = await partition_lag(settings.kafka, settings.kafka.topic)
        assert all(committed == end for committed, end in lag.values()), lag
        assert sum(end for _, end in lag.values()) == DOCUMENTS
        for dim in runtime.dims:
            assert await asyncio.to_thread(runtime.sink.count, dim) == DOCUMENTS
    finally:
        runtime.close()
