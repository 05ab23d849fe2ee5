"""Ingestion through a remote embeddings endpoint that misbehaves: real broker, Milvus Lite and Ray.

The endpoint (tests/helpers/fake_embeddings.py) answers a seeded share of requests with a fault —
a timeout, 429 and 503 with Retry-After, 500, a dropped connection, and malformed answers (a vector
short, an index twice, the wrong width, not JSON, NaN, items out of order) — and then fails every
request for a while (an outage).  Nothing may be lost or wrong: every replica equals the oracle,
every stored vector is the project's cut-then-normalize of the endpoint's full vector for its chunk,
the group commits nothing while the endpoint is down (offsets only after the writes), and everything
is committed once it is back.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from harness import task_problem
from helpers.fake_embeddings import FAULTS, OK, FakeEmbeddings, expected_vectors
from helpers.kafka_io import CommitWatcher, assert_all_committed, produce, read_topic
from helpers.oracle import compare, read_replicas
from streams import fault_seed, mixed_stream

from pipeline.runtime.assemble import build_runtime
from pipeline.runtime.consumer_actors import run_consumer_actors
from pipeline.settings import EmbedderSettings, ScalingSettings, Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

WIDTH = 384  # MiniLM's, whose tokenizer counts here
FAULT_SHARE = 0.35
OUTAGE_CHECK_S = 8.0


class Script:
    """The start's probe answered, then every fault once, in order, then a seeded ``FAULT_SHARE`` of
    faults; all 503 while ``down``."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self.down = False

    def __call__(self, n: int) -> str:
        if self.down:
            return "error503"
        if n == 0:  # the width learned at start is the model's (a wrong one would fail every request)
            return OK
        if n <= len(FAULTS):
            return FAULTS[n - 1]
        return self._rng.choice(FAULTS) if self._rng.random() < FAULT_SHARE else OK


def _endpoint_settings(server: FakeEmbeddings) -> EmbedderSettings:
    """The remote backend on ``server``: a try times out after 0.5 s, 3 tries with short backoff, 8 texts
    a request (many requests, so every fault is met)."""
    return EmbedderSettings(
        backend="openai",
        base_url=server.base_url,
        request_timeout_s=0.5,
        max_attempts=3,
        backoff_base_s=0.05,
        backoff_max_s=0.5,
        max_request_inputs=8,
    )


def _assert_endpoint_vectors(stored: dict[int, list[dict[str, Any]]], dims: tuple[int, ...]) -> None:
    """Every stored vector is the project's cut-then-normalize of the endpoint's vector for its chunk."""
    for dim, rows in stored.items():
        want = expected_vectors([r["text"] for r in rows], WIDTH, dims)[dim]
        np.testing.assert_allclose(np.array([r["embedding"] for r in rows]), want, atol=1e-5)


async def test_a_failing_endpoint_loses_nothing_and_commits_only_what_was_written(
    make_settings: Callable[..., Settings], milvus_lite_uri: str, ray_session: None
) -> None:
    script = Script(fault_seed(1414))
    oracle = mixed_stream(seed=1414, events=600)
    half = len(oracle.records) // 2
    async with FakeEmbeddings(WIDTH, script, slow_s=2.0) as server:
        remote = _endpoint_settings(server)
        settings = make_settings(milvus_lite_uri, embedder=remote, dims=(32,))
        kafka = settings.kafka
        runtime = await build_runtime(settings)
        stop = asyncio.Event()
        try:
            assert runtime.dims == (WIDTH, 32)
            await produce(kafka, oracle.records[:half])
            running = asyncio.create_task(runtime.new_consumer().run(stop=stop))
            alive = task_problem(running)
            async with CommitWatcher(kafka) as watcher:
                before = await watcher.wait_beyond(0, alive, 240)
                script.down = True
                await produce(kafka, oracle.records[half:])
                await asyncio.sleep(3.0)  # units written before the outage may still commit
                frozen, asked = await watcher.total(), len(server.bodies)
                down_since = time.monotonic()
                while time.monotonic() - down_since < OUTAGE_CHECK_S:
                    assert alive() is None
                    assert await watcher.total() == frozen, "committed while the endpoint was down"
                    await asyncio.sleep(1.0)
                assert len(server.bodies) > asked, "the worker stopped asking the endpoint"
                script.down = False
                await watcher.wait_beyond(len(oracle.records) - 1, alive, 300)
            stop.set()
            await asyncio.wait_for(running, 120)
            await assert_all_committed(kafka)
            replicas = await asyncio.to_thread(read_replicas, runtime.sink)
            verdict = compare(oracle, replicas, await read_topic(kafka, kafka.dlq_topic), kafka.topic)
            stored = {dim: await asyncio.to_thread(runtime.sink.fetch_all, dim) for dim in runtime.dims}
        finally:
            stop.set()
            runtime.close()
    assert verdict.exact, verdict.summary()
    _assert_endpoint_vectors(stored, runtime.dims)
    assert all(server.served[fault] >= 1 for fault in FAULTS), server.served
    assert frozen < len(oracle.records)
    print(
        f"\n{len(server.bodies)} requests, faults served {dict(server.served)}; committed {before} "
        f"before the outage, frozen at {frozen} of {len(oracle.records)} during it; {verdict.summary()}"
    )


async def test_consumer_actors_ask_a_failing_endpoint_themselves_and_lose_nothing(
    make_settings: Callable[..., Settings], milvus_lite_uri: str, ray_session: None
) -> None:
    """Two consumer actors (Ray workers, each with a client of its own) against the same faults."""
    oracle = mixed_stream(seed=1415, events=300)
    async with FakeEmbeddings(WIDTH, Script(fault_seed(1415)), slow_s=2.0) as server:
        remote = _endpoint_settings(server)
        settings = make_settings(
            milvus_lite_uri,
            embedder=remote,
            dims=(32,),
            scaling=ScalingSettings(consumer_cpus=0.25),
            ray_namespace=True,
        )
        runtime = await build_runtime(settings)
        try:
            await produce(settings.kafka, oracle.records)
            stats = await run_consumer_actors(runtime, 2, asyncio.Event(), until_idle_s=4.0)
            await assert_all_committed(settings.kafka)
            replicas = await asyncio.to_thread(read_replicas, runtime.sink)
            dead = await read_topic(settings.kafka, settings.kafka.dlq_topic)
            verdict = compare(oracle, replicas, dead, settings.kafka.topic)
            stored = {dim: await asyncio.to_thread(runtime.sink.fetch_all, dim) for dim in runtime.dims}
        finally:
            runtime.close()
    assert len(stats.members) == 2 and all(m.events for m in stats.members), stats
    assert verdict.exact, verdict.summary()
    _assert_endpoint_vectors(stored, runtime.dims)
    assert sum(server.served[fault] for fault in FAULTS) >= len(FAULTS), server.served
