"""Scenario 6: 2,000 interleaved updates and deletes of the same 20 ids, spread over many small
units on 4 partitions — every replica ends with each id's last event, deleted ids have no row
left (extra chunks of their earlier, longer versions included)."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest
from streams import (
    Expected,
    Record,
    assert_all_committed,
    assert_replicas_match,
    fault_settings,
    produce,
    read_topic,
)

from pipeline.runtime import build_runtime

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

IDS = [f"hot-{i:02d}" for i in range(20)]
WORDS = [
    "amber",
    "basalt",
    "cobalt",
    "delta",
    "ember",
    "fjord",
    "garnet",
    "harbor",
    "iris",
    "jade",
    "kelp",
    "lumen",
]


def interleaved_stream(seed: int = 11, events: int = 2000) -> tuple[list[Record], Expected]:
    """Upserts of 1–4 chunks (so updates shrink and grow documents), deletes as events and as
    tombstones; the last 40 events end half the ids with a long upsert, the other half deleted
    right after one."""
    rng = random.Random(seed)
    expected = Expected()
    records: list[Record] = []

    def upsert(doc_id: str, seq: int, sentences: int) -> None:
        text = " ".join(
            " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 14))) + f" seq{seq}."
            for _ in range(sentences)
        )
        metadata = {"seq": seq}
        value = {"id": doc_id, "text": text, "metadata": metadata}
        records.append(Record(doc_id.encode(), json.dumps(value).encode()))
        expected.upsert(doc_id, text, metadata)

    def delete(doc_id: str, tombstone: bool) -> None:
        value = None if tombstone else json.dumps({"op": "delete", "id": doc_id}).encode()
        records.append(Record(doc_id.encode(), value))
        expected.delete(doc_id)

    for seq in range(events - 2 * len(IDS)):
        doc_id = rng.choice(IDS)
        if rng.random() < 0.3:
            delete(doc_id, tombstone=rng.random() < 0.3)
        else:
            upsert(doc_id, seq, rng.choice([1, 1, 2, 4]))
    last_upsert: dict[str, Record] = {}
    for i, doc_id in enumerate(IDS):  # every id's last version is long (several chunks) ...
        upsert(doc_id, events + i, 4)
        last_upsert[doc_id] = records[-1]
    for doc_id in IDS[::2]:  # ... half the ids are then deleted ...
        delete(doc_id, tombstone=doc_id.endswith("4"))
    for doc_id in IDS[1::2]:  # ... and the other half re-delivered (a duplicate changes nothing)
        records.append(last_upsert[doc_id])
    assert len(records) == events
    return records, expected


async def test_last_event_per_id_wins_in_every_replica(
    kafka_bootstrap: str, milvus_lite_uri: str, minilm_path: Path, ray_session: None
) -> None:
    records, expected = interleaved_stream()
    assert len(expected.documents) == len(IDS) // 2
    # Units of at most 8 events: each id's events spread over dozens of units and polls.
    settings = fault_settings(
        kafka_bootstrap, milvus_lite_uri, minilm_path, dims=(256, 128), max_tokens=32, max_batch_events=8
    )
    runtime = await build_runtime(settings)
    try:
        await produce(settings, records)
        stats = await runtime.new_worker().run(until_idle_s=3.0)
        assert stats.events == len(records)
        assert stats.dead_letters == 0
        await asyncio.to_thread(assert_replicas_match, runtime.sink, runtime.dims, expected)
        assert len(runtime.dims) == 3
        assert await read_topic(settings, settings.kafka.dlq_topic) == []
        await assert_all_committed(settings)
    finally:
        runtime.close()
