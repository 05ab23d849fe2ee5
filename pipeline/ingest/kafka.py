"""Kafka plumbing shared by the consumer, the producer CLI and `status`: client options, topics, lag."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from aiokafka.helpers import create_ssl_context

from pipeline.settings import KafkaSettings
from workers.errors import ConfigError

log = logging.getLogger(__name__)


def client_options(kafka: KafkaSettings) -> dict[str, Any]:
    """Keyword arguments every aiokafka client of this project gets (bootstrap, TLS, SASL)."""
    options: dict[str, Any] = {
        "bootstrap_servers": kafka.bootstrap_servers,
        "security_protocol": kafka.security_protocol,
    }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=str(kafka.ssl_cafile) if kafka.ssl_cafile else None,
            certfile=str(kafka.ssl_certfile) if kafka.ssl_certfile else None,
            keyfile=str(kafka.ssl_keyfile) if kafka.ssl_keyfile else None,
        )
    if kafka.security_protocol.startswith("SASL"):
        password = kafka.sasl_secret()
        if not (kafka.sasl_mechanism and kafka.sasl_username and password):
            raise ConfigError(
                "kafka.security_protocol is SASL_* but kafka.sasl_mechanism, kafka.sasl_username "
                "or kafka.sasl_password (or sasl_password_file) is missing"
            )
        options["sasl_mechanism"] = kafka.sasl_mechanism
        options["sasl_plain_username"] = kafka.sasl_username
        options["sasl_plain_password"] = password
    return options


def make_producer(kafka: KafkaSettings, **overrides: Any) -> AIOKafkaProducer:
    """A producer that waits for all in-sync replicas.

    Idempotence stays off: the Tansu broker used locally rejects aiokafka's idempotent
    producer, and every write downstream is idempotent by primary key anyway.
    """
    options = client_options(kafka) | {"acks": "all", "enable_idempotence": False, "linger_ms": 5}
    return AIOKafkaProducer(**(options | overrides))


PRODUCTION_REPLICATION = 3
"""Replicas a production topic should have: it survives one broker down with ``min.insync.replicas=2``."""


def topic_replication(kafka: KafkaSettings, brokers: int) -> int:
    """The replication factor of the topics the worker creates on a cluster of ``brokers`` brokers:
    ``kafka.replication_factor``, else ``min(3, brokers)``.  Raises ConfigError when the setting asks for
    more replicas than there are brokers (Kafka would refuse; some brokers accept and under-replicate)."""
    wanted = kafka.replication_factor
    if wanted is None:
        return max(1, min(PRODUCTION_REPLICATION, brokers))
    if wanted > brokers:
        raise ConfigError(
            f"kafka.replication_factor is {wanted} but the cluster at {kafka.bootstrap_servers} has "
            f"{brokers} broker(s): lower it to at most {brokers}, or leave it unset (min(3, brokers))"
        )
    return wanted


async def ensure_topics(kafka: KafkaSettings) -> None:
    """Create the event and dead-letter topics when they are missing (existing ones are left alone).

    They get ``kafka.partitions`` / ``kafka.dlq_partitions`` partitions and
    :func:`topic_replication` replicas; fewer than 3 replicas is logged.  A replication factor the
    cluster cannot hold is refused before anything is created, and a topic the broker refuses to
    create is a ConfigError naming it (one that another process created meanwhile is fine).
    """
    admin = AIOKafkaAdminClient(**client_options(kafka))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        dlq_partitions = kafka.dlq_partitions or kafka.partitions
        partitions = {kafka.topic: kafka.partitions, kafka.dlq_topic: dlq_partitions}
        missing = [t for t in partitions if t not in existing]
        if not missing:
            return
        brokers = len((await admin.describe_cluster())["brokers"])
        replication = topic_replication(kafka, brokers)
        if replication < PRODUCTION_REPLICATION:
            log.warning(
                "creating topic(s) %s with replication factor %d: the cluster has %d broker(s) "
                "(%d is the production minimum; a lost broker loses the partitions it holds)",
                ", ".join(missing),
                replication,
                brokers,
                PRODUCTION_REPLICATION,
            )
        response = await admin.create_topics(
            [NewTopic(t, num_partitions=partitions[t], replication_factor=replication) for t in missing]
        )
        for topic, code, *detail in response.topic_errors:
            error = kafka_errors.for_code(code)
            # Another consumer may create it between our list and create.
            if code and error is not TopicAlreadyExistsError:
                message = detail[0] if detail and detail[0] else error.description
                raise ConfigError(
                    f"the broker refused to create topic {topic!r}: {error.__name__}: {message}"
                )
        log.info(
            "created topic(s) %s: %s partitions, replication factor %d",
            ", ".join(missing),
            "/".join(str(partitions[t]) for t in missing),
            replication,
        )
    finally:
        await admin.close()


async def partition_lag(
    kafka: KafkaSettings, topic: str, timeout_s: float = 5.0
) -> dict[int, tuple[int, int]]:
    """Per partition of ``topic``: (committed offset of the consumer group, high watermark).

    The high watermark is read from fetch responses rather than ListOffsets, which the
    local Tansu broker answers wrongly for some partitions.
    """
    consumer = AIOKafkaConsumer(**client_options(kafka), group_id=kafka.group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        if not partitions:
            await consumer._client.force_metadata_update()  # first contact may not know the topic yet
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        if not tps:
            return {}
        consumer.assign(tps)
        committed = {tp: (await consumer.committed(tp)) or 0 for tp in tps}
        for tp in tps:
            consumer.seek(tp, committed[tp])
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(consumer.highwater(tp) is None for tp in tps):
            await consumer.getmany(timeout_ms=200, max_records=1)
        return {tp.partition: (committed[tp], consumer.highwater(tp) or 0) for tp in tps}
    finally:
        await consumer.stop()


async def broker_reachable(kafka: KafkaSettings, timeout_s: float = 5.0) -> bool:
    """True when a bootstrap server answers a metadata request within ``timeout_s``."""
    admin = AIOKafkaAdminClient(**client_options(kafka), request_timeout_ms=int(timeout_s * 1000))
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
        await asyncio.wait_for(admin.list_topics(), timeout_s)
        return True
    except (KafkaError, OSError, TimeoutError):
        return False
    except Exception as exc:  # a probe reports, never crashes: e.g. aiokafka's SCRAM client
        # raises KeyError('v') when the broker refuses the login
        log.warning("broker %s refused the connection (%s)", kafka.bootstrap_servers, type(exc).__name__)
        return False
    finally:
        await admin.close()
