"""Scenario 1: the worker is SIGKILLed at seeded random moments and restarted each time.

One stream of 5,000 events (upserts, updates, deletes, tombstones, re-sent duplicates and
malformed records) is produced in slices; before each kill a slice is produced and a fresh
worker process (``python -m pipeline run``) is started.  Once the group's committed offsets
pass a seeded random point between the last kill's and what is produced (so the kills spread
over the whole stream, each after real progress), it is SIGKILLed after a further seeded
random 0-1.5 s: in the middle of embedding, writing, dead-lettering or committing.  A last
worker drains the rest.  Then every replica and the dead-letter topic
must equal the oracle: nothing lost, no extra row, every malformed record dead-lettered
(re-sends of one source offset, which at-least-once allows, are counted and reported).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import WorkerProcess, write_toml
from oracle import CommitWatcher, compare, mixed_stream, produce, read_replicas, read_topic
from services import RayCluster

from pipeline.config import Settings
from pipeline.kafka import ensure_topics, partition_lag
from pipeline.sink import MilvusSink

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # ~4 min on 2 idle cores; restarts dominate

SEED = 4001
EVENTS = 5000
KILLS = 10


async def test_sigkilled_worker_loses_and_duplicates_nothing(
    make_settings: Callable[..., Settings],
    open_sink: Callable[[Settings], MilvusSink],
    milvus_lite_uri: str,
    ray_cluster: RayCluster,
    tmp_path: Path,
) -> None:
    settings = make_settings(milvus_lite_uri)
    kafka, topic = settings.kafka, settings.kafka.topic
    oracle = mixed_stream(SEED, EVENTS)
    config = write_toml(settings, tmp_path / "worker.toml")
    worker = WorkerProcess(config, ray_cluster.address, ray_cluster.env, tmp_path / "logs")
    rng = random.Random(SEED)
    size = -(-len(oracle.records) // (KILLS + 1))
    slices = [oracle.records[i : i + size] for i in range(0, len(oracle.records), size)]
    produced = 0
    kill_points: list[tuple[int, int]] = []  # (events produced, events committed) at each kill
    restarts: list[float] = []  # seconds from the start of each killed worker to its kill point
    committed = 0
    started = time.monotonic()
    try:
        async with CommitWatcher(kafka) as watcher:
            await ensure_topics(kafka)
            for index in range(KILLS):
                produced += await produce(kafka, topic, slices[index])
                worker.start()
                begun = time.monotonic()
                target = committed + int(rng.uniform(0.2, 0.6) * (produced - committed))
                await watcher.wait_beyond(target, worker.exited, 300)
                restarts.append(time.monotonic() - begun)
                await asyncio.sleep(rng.uniform(0.0, 1.5))
                worker.kill()
                committed = await watcher.total()
                kill_points.append((produced, committed))
        for rest in slices[KILLS:]:
            produced += await produce(kafka, topic, rest)
        worker.start("--until-idle", "5")
        assert await asyncio.to_thread(worker.wait, 300) == 0, worker.log()[-4000:]
    finally:
        worker.stop()
    elapsed = time.monotonic() - started
    assert produced == len(oracle.records) >= EVENTS

    lag = await partition_lag(kafka, topic)
    assert sum(end for _, end in lag.values()) == produced
    assert all(committed == end for committed, end in lag.values()), lag
    replicas = await asyncio.to_thread(read_replicas, open_sink(settings))
    dead_letters = await read_topic(kafka, kafka.dlq_topic)
    verdict = compare(oracle, replicas, dead_letters, topic)
    print(
        f"\n{len(kill_points)} SIGKILLs survived in {elapsed:.0f}s over {produced} events; (produced, "
        f"committed) at each kill: {kill_points}; start to kill point: "
        f"{[round(r) for r in restarts]}s; {verdict.summary()}"
    )
    assert verdict.exact, verdict.summary()
    assert len(kill_points) == KILLS and worker.starts == KILLS + 1
    # Every killed worker had committed work of its own (by construction); the kills spread over the stream.
    assert kill_points[0][1] < produced // 4 and kill_points[-1][1] > produced // 2, kill_points
