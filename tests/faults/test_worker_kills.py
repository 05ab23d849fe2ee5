"""Scenario 1: the worker is SIGKILLed at seeded random moments and restarted each time.

One stream of 5,000 events (upserts, updates, deletes, tombstones, re-sent duplicates and
malformed records) is produced up front.  Kill point k is a seeded random offset count in the
k-th of 11 equal stretches of the stream; a fresh worker process (``python -m pipeline run``)
is started, and once the group's committed offsets pass the kill point it is SIGKILLed after a
further seeded random 0-1 s, or sooner once the commits leave the kill point's stretch (a fast
worker would otherwise run ahead, and leave the last restart less than one commit's work), with
the rest of the stream still to do:
in the middle of embedding, writing, dead-lettering or committing.  A last worker drains the
rest.  Then every replica and the dead-letter topic must equal the oracle: nothing lost, no
extra row, every malformed record dead-lettered (re-sends of one source offset, which
at-least-once allows, are counted and reported).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import WorkerProcess
from helpers.kafka_io import CommitWatcher, assert_all_committed, produce, read_topic
from helpers.oracle import compare, read_replicas
from helpers.services import RayCluster
from helpers.settings import write_toml
from streams import fault_seed, mixed_stream

from pipeline.ingest.kafka import ensure_topics
from pipeline.milvus.sink import MilvusSink
from pipeline.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # ~4 min on 2 idle cores; restarts dominate

SEED = 4001
EVENTS = 5000
KILLS = 10


async def strike_within(watcher: CommitWatcher, delay_s: float, last: int) -> None:
    """Return after ``delay_s``, or once more than ``last`` events are committed if that comes first."""
    deadline = time.monotonic() + delay_s
    while time.monotonic() < deadline and await watcher.total() <= last:
        await asyncio.sleep(0.02)


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
    rng = random.Random(fault_seed(SEED))
    stretch = len(oracle.records) / (KILLS + 1)
    points = [int(stretch * (k + rng.uniform(0.1, 0.9))) for k in range(KILLS)]
    kill_points: list[tuple[int, int]] = []  # (kill point, events committed) at each kill
    restarts: list[float] = []  # seconds from the start of each killed worker to its kill point
    committed = 0
    started = time.monotonic()
    try:
        async with CommitWatcher(kafka) as watcher:
            await ensure_topics(kafka)
            produced = len(await produce(kafka, oracle.records))
            for k, point in enumerate(points):
                worker.start()
                begun = time.monotonic()
                # A restarted worker re-reads from the last commit, which may already be past the point.
                await watcher.wait_beyond(max(point, committed), worker.exited, 300)
                restarts.append(time.monotonic() - begun)
                await strike_within(watcher, rng.uniform(0.0, 1.0), int(stretch * (k + 1)))
                worker.kill()
                committed = await watcher.total()
                kill_points.append((point, committed))
        worker.start("--until-idle", "5")
        assert await asyncio.to_thread(worker.wait, 300) == 0, worker.log()[-4000:]
    finally:
        worker.stop()
    elapsed = time.monotonic() - started
    assert produced == len(oracle.records) >= EVENTS

    ends = await assert_all_committed(kafka)
    assert sum(ends.values()) == produced
    replicas = await asyncio.to_thread(read_replicas, open_sink(settings))
    dead_letters = await read_topic(kafka, kafka.dlq_topic)
    verdict = compare(oracle, replicas, dead_letters, topic)
    print(
        f"\n{len(kill_points)} SIGKILLs survived in {elapsed:.0f}s over {produced} events; (kill point, "
        f"committed) at each kill: {kill_points}; start to kill point: "
        f"{[round(r) for r in restarts]}s; {verdict.summary()}"
    )
    assert verdict.exact, verdict.summary()
    assert len(kill_points) == KILLS and worker.starts == KILLS + 1
    # Every kill left work behind: the stream was not done when it struck.
    assert all(committed < produced for _, committed in kill_points), kill_points
