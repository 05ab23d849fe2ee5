"""A dead-letter topic the real broker refuses for good stops the worker with a clear error.

The Tansu broker creates a missing topic on first use unless its name is not a legal topic name;
so a dead-letter topic named ``"{run} dlq!"`` that was never created (or was deleted) is one that
auto-creation cannot fix: the producer waits for its metadata (``request_timeout_ms``, 40 s) and
gets UnknownTopicOrPartition.  Before the classification, the worker re-sent the letter forever
with a warning each time and the partition stalled.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from helpers.fakes import AcceptingSink, OnesEmbedder, WordSpans
from helpers.kafka_io import Record, committed_and_end, produce
from helpers.settings import private_settings

from pipeline.ingest.chunking import Chunker
from pipeline.ingest.consumer import IngestConsumer
from pipeline.ingest.dlq import DeadLetterSendFailed
from pipeline.ingest.kafka import client_options

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


async def test_a_dead_letter_topic_the_broker_refuses_stops_the_worker_naming_it(
    kafka_bootstrap: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = private_settings(kafka_bootstrap, name="dlqgone", kafka={"partitions": 1})
    dlq = f"{settings.kafka.topic} dlq!"
    settings = settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"dlq_topic": dlq})})
    good = [Record(f"d{i}".encode(), json.dumps({"id": f"d{i}", "text": "a b c"}).encode()) for i in range(5)]
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    await admin.start()
    try:
        await admin.create_topics([NewTopic(settings.kafka.topic, 1, 1)])  # the dead-letter topic: never
    finally:
        await admin.close()
    await produce(settings.kafka, [*good, Record(b"bad", b"not json"), *good])
    sink = AcceptingSink()
    worker = IngestConsumer(settings, OnesEmbedder(), sink, Chunker(WordSpans(), max_tokens=16), (8,))
    with caplog.at_level(logging.WARNING), pytest.raises(DeadLetterSendFailed) as raised:
        await asyncio.wait_for(worker.run(until_idle_s=120), 150)
    message = str(raised.value)
    assert f"to topic {dlq!r}" in message and "UnknownTopicOrPartitionError" in message, message
    assert "permanent" in message and "create it, or fix kafka.dlq_topic" in message, message
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert not retries, retries[:2]
    # The events before the refused letter may be committed; the letter's offset (5) never is.
    ((committed, end),) = (await committed_and_end(settings.kafka)).values()
    assert (committed or 0) <= 5 and end == 11
