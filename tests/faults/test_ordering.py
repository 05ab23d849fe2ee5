"""Scenario 6: 2,000 interleaved updates and deletes of the same 20 ids, spread over many small
units on 4 partitions — every replica ends with each id's last event, deleted ids have no row
left (extra chunks of their earlier, longer versions included)."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest
from helpers.kafka_io import assert_all_committed, produce, read_topic
from helpers.oracle import SHORT_WORDS, StreamOracle, assert_exact
from helpers.settings import private_settings
from streams import fault_seed

from pipeline.runtime.assemble import build_runtime

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

IDS = [f"hot-{i:02d}" for i in range(20)]


def interleaved_stream(seed: int = 11, events: int = 2000) -> StreamOracle:
    """Upserts of 1–4 chunks (so updates shrink and grow documents), deletes as events and as
    tombstones; then every id gets a long last version, half the ids are deleted after it and
    the other half see it re-delivered (a duplicate changes nothing)."""
    rng = random.Random(fault_seed(seed))
    oracle = StreamOracle()

    def upsert(doc_id: str, seq: int, sentences: int) -> None:
        text = " ".join(
            " ".join(rng.choice(SHORT_WORDS) for _ in range(rng.randint(8, 14))) + f" seq{seq}."
            for _ in range(sentences)
        )
        oracle.upsert(doc_id, text, {"seq": seq})

    for seq in range(events - 2 * len(IDS)):
        doc_id = rng.choice(IDS)
        if rng.random() < 0.3:
            oracle.delete(doc_id, tombstone=rng.random() < 0.3)
        else:
            upsert(doc_id, seq, rng.choice([1, 1, 2, 4]))
    for i, doc_id in enumerate(IDS):
        upsert(doc_id, events + i, 4)
        if i % 2:
            oracle.resend_last()
        else:
            oracle.delete(doc_id, tombstone=i % 4 == 0)
    assert len(oracle.records) == events
    return oracle


async def test_last_event_per_id_wins_in_every_replica(
    kafka_bootstrap: str, milvus_lite_uri: str, minilm_path: Path, ray_session: None
) -> None:
    oracle = interleaved_stream()
    records = oracle.records
    assert len(oracle.documents) == len(IDS) // 2
    # Units of at most 8 events: each id's events spread over dozens of units and polls.
    settings = private_settings(
        kafka_bootstrap,
        milvus_lite_uri,
        minilm_path,
        name="ordering",
        dims=(256, 128),
        max_tokens=32,
        consumer={"max_batch_events": 8},
    )
    runtime = await build_runtime(settings)
    try:
        await produce(settings.kafka, records)
        stats = await runtime.new_consumer().run(until_idle_s=3.0)
        assert stats.events == len(records)
        assert stats.dead_letters == 0
        assert len(runtime.dims) == 3
        dead = await read_topic(settings.kafka, settings.kafka.dlq_topic)
        await asyncio.to_thread(assert_exact, oracle, runtime.sink, dead, settings.kafka.topic)
        await assert_all_committed(settings.kafka)
    finally:
        runtime.close()
