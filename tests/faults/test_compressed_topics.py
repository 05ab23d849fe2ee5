"""Scenario: topics written by producers that compress (the default of many Java and librdkafka
producers).  Events compressed with each of Kafka's codecs land in every replica; a batch the worker
still cannot decode (its codec library missing) stops the worker with one line naming the
topic-partition, the offset and what to install — exit 2, no traceback — and commits nothing past it.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import WorkerProcess
from helpers.kafka_io import Record, assert_all_committed, committed_and_end, read_topic
from helpers.oracle import StreamOracle, assert_exact, random_text
from helpers.services import RayCluster
from helpers.settings import write_toml

from pipeline.ingest.kafka import ensure_topics, make_producer
from pipeline.runtime.assemble import build_runtime
from pipeline.settings import KafkaSettings, Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CODECS = ("gzip", "snappy", "lz4", "zstd")

# Loaded first by the worker process it is put on the path of: every ``import cramjam`` then raises
# ImportError, as on an install without it (aiokafka's codec extras).
_NO_CODECS = 'import sys\nsys.modules["cramjam"] = None\n'


async def _produce_compressed(kafka: KafkaSettings, records: list[Record], codec: str) -> None:
    producer = make_producer(kafka, compression_type=codec)
    await producer.start()
    try:
        sends = [await producer.send(kafka.topic, key=r.key, value=r.value) for r in records]
        await asyncio.gather(*sends)
    finally:
        await producer.stop()


def _stream(oracle: StreamOracle, codec: str, rng: random.Random) -> list[Record]:
    """Upserts of 10 ids (2-sentence texts), an update and a delete, all keyed by id."""
    start = len(oracle.records)
    for i in range(10):
        oracle.upsert(f"{codec}-{i}", random_text(rng, 2), {"codec": codec})
    oracle.upsert(f"{codec}-0", random_text(rng, 1), {"codec": codec, "v": 2})
    oracle.delete(f"{codec}-9", tombstone=codec == "lz4")
    return oracle.records[start:]


async def test_every_codec_lands_in_every_replica(
    make_settings: Callable[..., Settings], milvus_lite_uri: str, ray_session: None
) -> None:
    settings = make_settings(milvus_lite_uri, name="codecs")
    rng, oracle = random.Random(12), StreamOracle()
    await ensure_topics(settings.kafka)
    for codec in CODECS:
        await _produce_compressed(settings.kafka, _stream(oracle, codec, rng), codec)
    runtime = await build_runtime(settings)
    try:
        stats = await runtime.new_consumer().run(until_idle_s=3.0)
        assert stats.events == len(oracle.records) and stats.dead_letters == 0
        dead = await read_topic(settings.kafka, settings.kafka.dlq_topic)
        await asyncio.to_thread(assert_exact, oracle, runtime.sink, dead, settings.kafka.topic)
        await assert_all_committed(settings.kafka)
    finally:
        runtime.close()
    assert {doc.metadata["codec"] for doc in oracle.documents.values()} == set(CODECS)


async def test_a_batch_without_its_codec_stops_the_worker_with_one_clear_line(
    make_settings: Callable[..., Settings], milvus_lite_uri: str, ray_cluster: RayCluster, tmp_path: Path
) -> None:
    settings = make_settings(milvus_lite_uri, name="nocodec", kafka={"partitions": 1})
    oracle = StreamOracle()
    await ensure_topics(settings.kafka)
    await _produce_compressed(settings.kafka, _stream(oracle, "snappy", random.Random(3)), "snappy")
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_NO_CODECS)
    config = write_toml(settings, tmp_path / "worker.toml")
    env = {**ray_cluster.env, "PYTHONPATH": str(site)}
    worker = WorkerProcess(config, ray_cluster.address, env, tmp_path / "logs")
    worker.start("--until-idle", "30")
    try:
        rc = await asyncio.to_thread(worker.wait, 240)
    finally:
        worker.stop()
    log = worker.log()
    topic = settings.kafka.topic
    line = (
        f"configuration error: cannot decode the record batch of {topic}[0] at offset 0: "
        "UnsupportedCodecError: Libraries for snappy compression codec not found. "
        "Install the codecs: pip install 'aiokafka[snappy,lz4,zstd]'"
    )
    assert rc == 2, log[-4000:]
    assert log.count(line) == 1, log[-4000:]
    assert "Traceback" not in log, log[-4000:]
    assert (await committed_and_end(settings.kafka))[0] == (None, len(oracle.records))
