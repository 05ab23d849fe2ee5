"""When to grow or shrink the embedder pool: a pure policy over backlog observations.

Backlog is what waits for the embedders: consumer lag (events not yet committed, summed over
partitions) and tokens queued in the actors' micro-batchers.  The pool grows at once to what the
backlog asks for (within ``max_embedders``), then waits ``cooldown_s`` before the next change; it
shrinks one actor at a time, and only after the backlog has asked for fewer actors for
``scale_down_after_s`` without a break, so a burst does not make it flap.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaError

from pipeline.ingest.kafka import partition_lag
from pipeline.runtime.assemble import Runtime
from pipeline.runtime.embedders import actors_of
from pipeline.settings import ScalingSettings, Settings
from workers.errors import RetriableError
from workers.pool import EmbedderPool
from workers.scaling import PoolScaler

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backlog:
    """One observation of the pipeline."""

    actors: int
    lag_events: int
    queued_tokens: int
    at: float
    """Monotonic seconds."""


@dataclass(frozen=True)
class ScaleState:
    """What the policy remembers between observations."""

    changed_at: float = -math.inf
    calm_since: float | None = None
    """Since when the backlog has asked for fewer actors than there are (None: it does not)."""


def wanted_actors(settings: ScalingSettings, backlog: Backlog) -> int:
    """Actors the backlog asks for, within ``min_embedders..max_embedders``."""
    by_lag = math.ceil(backlog.lag_events / settings.lag_per_embedder)
    by_queue = math.ceil(backlog.queued_tokens / settings.queued_tokens_per_embedder)
    return max(settings.min_embedders, min(settings.max_embedders, max(by_lag, by_queue)))


def decide(settings: ScalingSettings, state: ScaleState, backlog: Backlog) -> tuple[int, ScaleState]:
    """The pool size to have now, and the state to pass to the next call."""
    wanted, actors, now = wanted_actors(settings, backlog), backlog.actors, backlog.at
    cooled = now - state.changed_at >= settings.cooldown_s
    if wanted > actors or actors < settings.min_embedders:
        if cooled or actors < settings.min_embedders:
            return max(wanted, settings.min_embedders), ScaleState(changed_at=now)
        return actors, ScaleState(state.changed_at)
    if wanted < actors or actors > settings.max_embedders:
        calm_since = state.calm_since if state.calm_since is not None else now
        if cooled and now - calm_since >= settings.scale_down_after_s:
            return actors - 1, ScaleState(changed_at=now, calm_since=now)
        return actors, ScaleState(state.changed_at, calm_since)
    return actors, ScaleState(state.changed_at)


async def observe(settings: Settings, pool: EmbedderPool, at: float) -> Backlog:
    """The backlog now: the group's lag on the topic and the tokens queued in the pool's actors."""
    lag = await partition_lag(settings.kafka, settings.kafka.topic)
    stats = await pool.stats()
    queued = sum(int(s.get("queued_tokens", 0)) for s in stats)
    return Backlog(pool.size, sum(max(0, end - committed) for committed, end in lag.values()), queued, at)


async def autoscale(settings: Settings, pool: EmbedderPool, scaler: PoolScaler) -> None:
    """Resize the pool by backlog every ``scaling.check_interval_s`` until cancelled.

    A round that fails transiently (broker or an actor unreachable, a new actor not starting) is
    logged and the next round tries again; any other error ends the task with it.
    """
    scaling = settings.scaling
    state = ScaleState()
    while True:
        await asyncio.sleep(scaling.check_interval_s)
        try:
            backlog = await observe(settings, pool, time.monotonic())
            target, state = decide(scaling, state, backlog)
            if target != pool.size:
                log.info(
                    "autoscaling %d -> %d embedder actors (lag %d events, %d tokens queued)",
                    pool.size,
                    target,
                    backlog.lag_events,
                    backlog.queued_tokens,
                )
                await scaler.scale_to(target)
        except (RetriableError, KafkaError, OSError) as exc:
            log.warning("autoscaling round failed (%s); next round in %.0fs", exc, scaling.check_interval_s)


def start_autoscaler(
    runtime: Runtime, consumers: list[Any], running: asyncio.Task[Any]
) -> asyncio.Task[None]:
    """The autoscaling task; should it fail for good, ingestion stops with its error logged."""
    settings = runtime.settings
    pool = actors_of(runtime.pool, "scaling.autoscale")
    scaler = PoolScaler(
        pool,
        settings.model,
        settings.batching,
        settings.pool,
        settings.ray.namespace,
        added=[c.add_embedder.remote for c in consumers],
        retiring=[c.retire_embedder.remote for c in consumers],
    )
    task = asyncio.create_task(autoscale(settings, pool, scaler), name="autoscaler")

    def on_done(done: asyncio.Task[None]) -> None:
        if not done.cancelled() and done.exception() is not None:
            log.error("the autoscaler failed; stopping ingestion", exc_info=done.exception())
            running.cancel()

    task.add_done_callback(on_done)
    return task
