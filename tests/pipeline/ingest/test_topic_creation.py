"""Topics the worker creates get their partitions and replication factor from the settings, with a
production default (min(3, brokers)), against the real one-broker Tansu."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from helpers.settings import private_kafka

from pipeline.ingest.kafka import client_options, ensure_topics, topic_replication
from pipeline.settings import KafkaSettings
from workers.errors import ConfigError


async def _describe(kafka: KafkaSettings) -> dict[str, Any]:
    """Per topic of ``kafka`` that exists: (partition count, replicas of each partition)."""
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = [t for t in (kafka.topic, kafka.dlq_topic) if t in existing]
        described = await admin.describe_topics(wanted) if wanted else []
        return {
            t["topic"]: (len(t["partitions"]), sorted({len(p["replicas"]) for p in t["partitions"]}))
            for t in described
        }
    finally:
        await admin.close()


async def test_one_broker_gets_replication_1_logged_and_partitions_from_settings(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    kafka = private_kafka(kafka_bootstrap, "topics", partitions=3, dlq_partitions=2)
    with caplog.at_level(logging.INFO, logger="pipeline.ingest.kafka"):
        await ensure_topics(kafka)
    assert await _describe(kafka) == {kafka.topic: (3, [1]), kafka.dlq_topic: (2, [1])}
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"creating topic(s) {kafka.topic}, {kafka.dlq_topic} with replication factor 1" in warning
    assert "the cluster has 1 broker(s) (3 is the production minimum" in warning
    caplog.clear()
    await ensure_topics(kafka)  # existing topics are left alone, silently
    assert not caplog.records


async def test_more_replicas_than_brokers_is_refused_before_anything_is_created(kafka_bootstrap: str) -> None:
    kafka = private_kafka(kafka_bootstrap, "topics", replication_factor=3)
    with pytest.raises(ConfigError, match=r"kafka.replication_factor is 3 but the cluster .* has 1 broker"):
        await ensure_topics(kafka)
    assert await _describe(kafka) == {}  # the broker would have taken it (Tansu accepts 3 on 1 broker)


@pytest.mark.parametrize(
    ("setting", "brokers", "replication"), [(None, 1, 1), (None, 2, 2), (None, 3, 3), (None, 7, 3), (2, 5, 2)]
)
def test_replication_is_the_setting_else_three_at_most_the_brokers(
    setting: int | None, brokers: int, replication: int
) -> None:
    kafka = KafkaSettings(replication_factor=setting)
    assert topic_replication(kafka, brokers) == replication


def test_an_explicit_replication_over_the_brokers_names_both() -> None:
    with pytest.raises(
        ConfigError, match=r"replication_factor is 5 but .* has 3 broker\(s\): lower it to at most 3"
    ):
        topic_replication(KafkaSettings(replication_factor=5), 3)
