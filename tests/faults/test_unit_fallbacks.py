"""Item 6 of issue 12: when the last event of an id in a unit cannot be written, the id's previous
event in the unit is written instead, so the replicas hold what applying the events one by one gives.

Real broker, Ray (an embedder actor that dies on a poison text) and Milvus Lite; one partition, units
of 8 events, and ids whose events interleave so that a unit holds several events per id: upserts,
a delete, and then, as each id's last events, ones that cannot be written (an instruction that
leaves no room to chunk, a text that kills the actor, both in a row).  Every replica must equal the
oracle, which applies each event alone (a failing one leaves its document as it was), and every
failing event must be in the dead-letter topic.  Before, a unit kept only an id's last event, and
when it failed the earlier ones — the delete too — were lost with it.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from collections.abc import Callable
from pathlib import Path

import crashing_actor
import pytest
import ray
from crashing_actor import POISON, CrashingEmbedder
from helpers.kafka_io import Record, assert_all_committed, produce, read_topic
from helpers.oracle import StreamOracle, compare, random_text, read_replicas

from pipeline.ingest.kafka import ensure_topics
from pipeline.milvus.sink import MilvusSink
from pipeline.runtime.assemble import build_runtime
from pipeline.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

NO_ROOM = " ".join(["represent"] * 100)  # an instruction longer than a chunk (64 tokens)


def fallback_stream(seed: int = 6006, groups: int = 4) -> StreamOracle:
    rng = random.Random(seed)
    oracle = StreamOracle()

    def upsert(doc_id: str, v: int) -> None:
        oracle.upsert(doc_id, f"v{v} " + random_text(rng, 1), {"v": v})

    def unchunkable(doc_id: str) -> None:
        event = {"id": doc_id, "text": random_text(rng, 1), "instruction": NO_ROOM}
        oracle.malformed_record(Record(doc_id.encode(), json.dumps(event).encode()), "cannot be chunked")

    def poison(doc_id: str) -> None:
        event = {"id": doc_id, "text": f"Basalt comet {POISON} fjord.", "metadata": {}}
        oracle.malformed_record(Record(doc_id.encode(), json.dumps(event).encode()), "crashed the embedder")

    for g in range(groups):
        a, b, c = (f"g{g}-{name}" for name in "abc")
        upsert(a, 1)
        upsert(b, 1)
        upsert(c, 1)
        oracle.delete(a)  # then a's last event cannot be chunked: a must end deleted
        upsert(b, 2)
        upsert(c, 2)
        unchunkable(a)
        if g < 2:  # b: the last kills the actor, the one before cannot be chunked: b ends at v2
            unchunkable(b)
            poison(b)
        else:
            unchunkable(b)
        upsert(c, 3)
        unchunkable(c)
    return oracle


async def test_an_ids_earlier_event_is_written_when_its_last_cannot_be(
    make_settings: Callable[..., Settings],
    open_sink: Callable[[Settings], MilvusSink],
    milvus_lite_uri: str,
    ray_session: None,
    tmp_path: Path,
) -> None:
    ray.cloudpickle.register_pickle_by_value(sys.modules[crashing_actor.__name__])  # Ray workers lack tests/
    actor = type("Crashing", (CrashingEmbedder,), {"marker_dir": str(tmp_path)})
    settings = make_settings(
        milvus_lite_uri,
        kafka={"session_timeout_ms": 3000, "heartbeat_interval_ms": 500, "partitions": 1},
        pool={"num_actors": 1, "cpus_per_actor": 1.0, "poison_after_crashes": 1, "max_attempts": 4},
        consumer={"commit_interval_s": 0.3, "max_batch_events": 8, "retry_backoff_max_s": 2.0},
    )
    kafka, topic = settings.kafka, settings.kafka.topic
    oracle = fallback_stream()
    await ensure_topics(kafka)
    runtime = await build_runtime(settings, actor_class=actor)
    try:
        await produce(kafka, oracle.records)
        stats = await runtime.new_consumer().run(until_idle_s=5.0)
    finally:
        runtime.close()
    assert stats.events >= len(oracle.records)
    await assert_all_committed(kafka)
    replicas = await asyncio.to_thread(read_replicas, open_sink(settings))
    verdict = compare(oracle, replicas, await read_topic(kafka, kafka.dlq_topic), topic)
    print(f"\n{len(oracle.records)} events in units of 8; {verdict.summary()}")
    assert verdict.exact, verdict.summary()
