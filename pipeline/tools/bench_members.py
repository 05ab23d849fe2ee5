"""The pipeline phase of ``bench --end-to-end`` with several embedder and consumer actors.

``bench --end-to-end --actors N --consumer-actors M`` sizes the run as ``run --consumer-actors M`` on a
pool of N embedders would be (:func:`sized_settings`), and :func:`consume` runs its pipeline phase: one
consumer in the bench process (M = 0) or M consumer-group members as Ray actors.
"""

from __future__ import annotations

import asyncio

from pipeline.ingest.consumer_stats import ConsumerStats
from pipeline.runtime.assemble import Runtime
from pipeline.runtime.consumer_actors import run_consumer_actors
from pipeline.runtime.run_summary import GroupStats
from pipeline.settings import Settings


def sized_settings(
    settings: Settings, actors: int | None, consumer_actors: int | None, partitions: int | None
) -> Settings:
    """``settings`` with ``actors`` embedders, ``consumer_actors`` consumer actors and ``partitions``
    topic partitions (each None: as configured, the partitions raised to one per consumer actor)."""
    members = settings.scaling.consumer_actors if consumer_actors is None else consumer_actors
    pool = settings.pool.model_copy(update={"num_actors": actors or settings.pool.num_actors})
    scaling = settings.scaling.model_copy(update={"consumer_actors": members})
    partitions = partitions or max(settings.kafka.partitions, members)
    kafka = settings.kafka.model_copy(update={"partitions": partitions})
    return settings.model_copy(update={"pool": pool, "scaling": scaling, "kafka": kafka})


def group_seconds(stats: GroupStats, one_host: bool) -> float:
    """The group's busy time: from the first record any member polled to the last unit any member
    acknowledged when every member ran on one host (one monotonic clock), else the busiest member's
    own busy time (members on other nodes share no clock)."""
    if not one_host:
        return stats.busiest_member_seconds()
    spans = [
        (m.first_record_at, m.last_ack_at)
        for m in stats.members
        if m.first_record_at is not None and m.last_ack_at is not None
    ]
    if not spans:
        return 0.0
    return max(last for _, last in spans) - min(first for first, _ in spans)


async def consume(runtime: Runtime, members: int, one_host: bool) -> tuple[ConsumerStats | GroupStats, float]:
    """Consume the bench topic until idle: in this process (``members`` 0) or with ``members``
    consumer actors; returns the counters and the busy seconds."""
    if not members:
        stats = await runtime.new_consumer().run(until_idle_s=3.0)
        return stats, stats.busy_seconds()
    # Idle a while longer than one consumer: a member may wait out a rebalance (~5 s) for its partitions.
    stop = asyncio.Event()
    group = await run_consumer_actors(runtime, members, stop, until_idle_s=10.0)
    return group, group_seconds(group, one_host)
