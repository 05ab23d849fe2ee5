"""A producer built on librdkafka (confluent-kafka), compressing as Java and librdkafka producers do
by default, reaches the local Tansu broker, and the worker's aiokafka consumer reads its records.

librdkafka 2.0.2 (Debian 12's kcat 1.7.1) cannot talk to Tansu 0.6.0 at all — its ApiVersions request
fails ("Read underflow") with every setting tried (``api.version.request=false``,
``broker.version.fallback``), see README; confluent-kafka 2.16 (librdkafka 2.16) works unchanged.
"""

from __future__ import annotations

import asyncio

import pytest
from helpers.kafka_io import read_topic
from helpers.settings import private_kafka

from pipeline.ingest.kafka import ensure_topics

confluent_kafka = pytest.importorskip("confluent_kafka")  # the [test] extra installs it


def _produce(
    bootstrap: str, topic: str, records: list[tuple[bytes, bytes]], compression: str
) -> list[object]:
    errors: list[object] = []
    producer = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "compression.type": compression, "message.timeout.ms": 20000}
    )
    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=lambda err, _msg: errors.append(err))
    assert producer.flush(30) == 0
    return errors


@pytest.mark.parametrize("compression", ["none", "snappy", "lz4", "zstd"])
async def test_a_confluent_kafka_producer_is_read_by_aiokafka(kafka_bootstrap: str, compression: str) -> None:
    kafka = private_kafka(kafka_bootstrap, "rdkafka", partitions=2)
    await ensure_topics(kafka)
    records = [(f"d{i}".encode(), b'{"id": "d%d", "text": "hello %d"}' % (i, i)) for i in range(20)]
    outcomes = await asyncio.to_thread(_produce, kafka_bootstrap, kafka.topic, records, compression)
    assert outcomes == [None] * len(records)  # every record acknowledged
    read = await read_topic(kafka, kafka.topic)
    assert sorted((r.key, r.value) for r in read) == sorted(records)
