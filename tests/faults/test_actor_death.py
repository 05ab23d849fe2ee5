"""Scenario 2: embedder actors die mid-batch (their process exits inside ``embed``).

The pool's actor is :class:`crashing_actor.CrashingEmbedder`: three documents carry a text that
kills the actor the first time it is embedded (Ray restarts it, the batch is retried and the
documents land), one carries a text that kills it every time (the pool splits its request until
that text is isolated, and the worker dead-letters its document with the reason).  Everything
else, including the documents that shared a batch with the poison, must land: every replica and
the DLQ exactly as the oracle says.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import crashing_actor
import pytest
import ray
from crashing_actor import POISON, CrashingEmbedder
from helpers.kafka_io import Record, assert_all_committed, produce, read_topic
from helpers.oracle import compare, read_replicas
from streams import mixed_stream

from pipeline.milvus.sink import MilvusSink
from pipeline.runtime.assemble import build_runtime
from pipeline.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CRASH_ONCE = 3


async def test_dying_actors_are_restarted_and_a_poison_text_is_isolated(
    make_settings: Callable[..., Settings],
    open_sink: Callable[[Settings], MilvusSink],
    milvus_lite_uri: str,
    ray_session: None,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="workers.pool")
    ray.cloudpickle.register_pickle_by_value(sys.modules[crashing_actor.__name__])  # Ray workers lack tests/
    actor = type("Crashing", (CrashingEmbedder,), {"marker_dir": str(tmp_path)})
    settings = make_settings(
        milvus_lite_uri,
        # One failed try and a request runs alone; one crash alone and it is split: fewer restarts.
        pool={"num_actors": 1, "cpus_per_actor": 1.0, "poison_after_crashes": 1, "max_attempts": 4},
        consumer={"commit_interval_s": 0.3, "max_batch_events": 16, "retry_backoff_max_s": 2.0},
    )
    kafka, topic = settings.kafka, settings.kafka.topic
    oracle = mixed_stream(seed=2002, events=400, documents=120)
    for i in range(CRASH_ONCE):
        oracle.upsert(f"crash-once-{i}", f"Lantern signal CRASH-ONCE-c{i} harbor orbit.", {"crash": i})
        oracle.records.insert(100 * (i + 1), oracle.records.pop())
    event = {"id": "poisoned", "text": f"Granite meadow {POISON} copper tide.", "metadata": {}}
    oracle.malformed_record(Record(b"poisoned", json.dumps(event).encode()), "crashed the embedder actor")
    oracle.records.insert(250, oracle.records.pop())

    runtime = await build_runtime(settings, actor_class=actor)
    started = time.monotonic()
    try:
        await produce(kafka, oracle.records)
        stats = await runtime.new_consumer().run(until_idle_s=5.0)
    finally:
        runtime.close()
    elapsed = time.monotonic() - started
    assert stats.events >= len(oracle.records)
    await assert_all_committed(kafka)
    replicas = await asyncio.to_thread(read_replicas, open_sink(settings))
    verdict = compare(oracle, replicas, await read_topic(kafka, kafka.dlq_topic), topic)
    crashed_once = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("c"))
    failures = sum("failed" in r.getMessage() and "embedder-0" in r.getMessage() for r in caplog.records)
    print(
        f"\nactor deaths seen by the pool: {failures} (crash-once texts {crashed_once}, the rest the "
        f"poison and its bisection); {elapsed:.0f}s; {verdict.summary()}"
    )
    assert crashed_once == [f"c{i}" for i in range(CRASH_ONCE)]
    assert any("isolated a text that crashes embedder actors" in r.getMessage() for r in caplog.records)
    assert verdict.exact, verdict.summary()
