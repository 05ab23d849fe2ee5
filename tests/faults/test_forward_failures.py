"""Forward passes that run out of memory (injected on the CPU, inside the forward pass) are not fatal.

The pool's actor is :class:`oom_actor.OutOfMemoryEmbedder`: a batch holding two or more long texts
raises ``torch.OutOfMemoryError`` from the model's forward pass, and one document's text raises it
even alone.  The actor splits its batches until they fit; every event lands in every replica, and
only the document that fails alone is dead-lettered, with the reason (``embedder_error``).  Before
this was handled, the first such error stopped the worker.

A model that breaks for good (:class:`oom_actor.StickyErrorEmbedder`, as after a CUDA device-side
assert) is not blamed on the text that was running: the probe fails too, the actor exits, Ray
restarts it, and everything lands with nothing dead-lettered.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

import oom_actor
import pytest
import ray
from helpers.kafka_io import Record, assert_all_committed, produce, read_topic
from helpers.oracle import compare, read_replicas
from oom_actor import STICKY, TOO_BIG, OutOfMemoryEmbedder, StickyErrorEmbedder
from streams import mixed_stream

from pipeline.milvus.sink import MilvusSink
from pipeline.runtime.assemble import build_runtime
from pipeline.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


async def test_out_of_memory_batches_are_split_and_only_a_text_failing_alone_is_dead_lettered(
    make_settings: Callable[..., Settings],
    open_sink: Callable[[Settings], MilvusSink],
    milvus_lite_uri: str,
    ray_session: None,
) -> None:
    ray.cloudpickle.register_pickle_by_value(sys.modules[oom_actor.__name__])  # Ray workers lack tests/
    settings = make_settings(
        milvus_lite_uri,
        pool={"num_actors": 1, "cpus_per_actor": 1.0},
        consumer={"commit_interval_s": 0.3, "max_batch_events": 64, "retry_backoff_max_s": 2.0},
    )
    kafka, topic = settings.kafka, settings.kafka.topic
    oracle = mixed_stream(seed=1212, events=400, documents=150, sentences=(1, 2, 2))
    event = {"id": "too-big", "text": f"Granite meadow {TOO_BIG} copper tide.", "metadata": {}}
    oracle.malformed_record(Record(b"too-big", json.dumps(event).encode()), "out of memory")
    oracle.records.insert(200, oracle.records.pop())

    runtime = await build_runtime(settings, actor_class=OutOfMemoryEmbedder)
    started = time.monotonic()
    try:
        await produce(kafka, oracle.records)
        stats = await runtime.new_consumer().run(until_idle_s=5.0)
        (actor,) = await runtime.pool.stats()
    finally:
        runtime.close()
    elapsed = time.monotonic() - started
    assert stats.events >= len(oracle.records)
    await assert_all_committed(kafka)
    replicas = await asyncio.to_thread(read_replicas, open_sink(settings))
    dead_letters = await read_topic(kafka, kafka.dlq_topic)
    verdict = compare(oracle, replicas, dead_letters, topic)
    print(
        f"\nforward passes: {actor['batches']} ok, {actor['failed_batches']} failed ({actor['oom_splits']} "
        f"split after an out-of-memory, {actor['failed_texts']} text failed alone); budget now "
        f"{actor['batch_budget']}; {elapsed:.0f}s; {verdict.summary()}"
    )
    assert verdict.exact, verdict.summary()
    assert actor["oom_splits"] > 0  # the injected out-of-memory fired on batches, and they were split
    assert actor["failed_texts"] >= 1
    (letter,) = [d for d in dead_letters if d.key == b"too-big"][:1]
    headers = {k: v.decode() for k, v in letter.headers}
    assert headers["reason_code"] == "embedder_error"
    assert "out of memory" in headers["error"] and "too big to fit alone" in headers["error"]


async def test_a_model_broken_for_good_restarts_its_actor_and_blames_no_text(
    make_settings: Callable[..., Settings],
    open_sink: Callable[[Settings], MilvusSink],
    milvus_lite_uri: str,
    ray_session: None,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="workers.pool")
    ray.cloudpickle.register_pickle_by_value(sys.modules[oom_actor.__name__])
    actor = type("Sticky", (StickyErrorEmbedder,), {"marker_dir": str(tmp_path)})
    settings = make_settings(
        milvus_lite_uri,
        pool={"num_actors": 1, "cpus_per_actor": 1.0},
        consumer={"commit_interval_s": 0.3, "max_batch_events": 64, "retry_backoff_max_s": 2.0},
    )
    kafka, topic = settings.kafka, settings.kafka.topic
    oracle = mixed_stream(seed=1313, events=300, documents=120)
    oracle.upsert("sticky", f"Lantern signal {STICKY} harbor orbit.", {"sticky": True})
    oracle.records.insert(150, oracle.records.pop())

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
    deaths = sum("embedder-0 failed" in r.getMessage() for r in caplog.records)
    print(f"\nactor deaths seen by the pool: {deaths}; {verdict.summary()}")
    assert (tmp_path / "sticky").exists()  # the device broke once
    assert deaths >= 1  # and the actor exited for Ray to restart it, instead of blaming a text
    assert verdict.exact, verdict.summary()
