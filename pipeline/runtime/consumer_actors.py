"""Consumers as Ray actors: N members of one consumer group, placed anywhere in the cluster.

Each :class:`ConsumerActor` (named ``consumer-{i}`` in the ``run`` process's namespace) holds its own Kafka
consumer, chunker and Milvus sink and embeds on the shared embedder actors, which the driver
started (on GPU nodes) and hands over as actor handles — or, with ``embedder.backend = "openai"``,
on the remote endpoint, through a client of its own (:func:`pipeline.remote.startup.remote_embedder_for`).
The driver (:func:`run_consumer_actors`) supervises them: Ray restarts a consumer that died
(``max_restarts``) and re-runs its ``run`` call (``max_task_retries``), so the member rejoins the group
and re-reads from the committed offsets; nothing acknowledged is lost and nothing unacknowledged was
committed.

Secrets never travel through Ray: a consumer actor's arguments are visible to whoever can read
the cluster's state (the dashboard, the GCS), so they carry the settings without any secret
value.  Each actor reads its Kafka and Milvus secrets on its own node: from the ``*_file``
settings (a path present on every node), or from the environment and config file of the Ray
worker process there.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, cast

import ray
from ray.actor import ActorHandle

from pipeline.ingest.consumer import IngestConsumer
from pipeline.ingest.consumer_stats import ConsumerStats
from pipeline.milvus.sink import MilvusSink
from pipeline.remote.startup import remote_embedder_for
from pipeline.runtime.assemble import Runtime, make_chunker
from pipeline.runtime.embedders import EmbedderBackend, actors_of
from pipeline.runtime.run_summary import BUSY, GroupStats
from pipeline.settings import Settings, load_settings
from workers.adapter_view import with_adapter
from workers.errors import ConfigError
from workers.model.embedding_model import ModelInfo
from workers.model.tokenizer import load_text_tokenizer
from workers.pool import EmbedderPool

log = logging.getLogger(__name__)


class ConsumerActor:
    """One consumer-group member in its own Ray worker process (an async actor)."""

    def __init__(
        self,
        settings: Settings,
        secrets: tuple[str, ...],
        index: int,
        embedders: Sequence[ActorHandle],
        info: ModelInfo,
        dims: tuple[int, ...],
    ) -> None:
        if not logging.getLogger().handlers:  # INFO lines reach the actor's log in the dashboard
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._name = f"consumer-{index}"
        settings = with_node_secrets(settings, secrets, self._name)
        self._settings = settings
        tokenizer = load_text_tokenizer(settings.model)
        self._pool: EmbedderBackend
        if settings.embedder.backend == "openai":  # each member asks the endpoint itself
            self._pool = remote_embedder_for(settings, info, tokenizer)
        else:
            self._pool = _current_pool(settings, embedders, info)
        self._special_tokens = tokenizer.num_special_tokens
        self._chunker = make_chunker(settings, tokenizer, info)
        self._dims = dims
        self._stop: asyncio.Event | None = None
        log.info(
            "%s ready: topic %s, group %s, %d embedder actor(s)",
            self._name,
            settings.kafka.topic,
            settings.kafka.group_id,
            self._pool.size,
        )

    async def run(self, until_idle_s: float | None = None) -> ConsumerStats:
        """Consume until :meth:`stop` (or idle for ``until_idle_s``); returns this run's counters and
        busy time, measured on this process's clock."""
        sink = MilvusSink(self._settings.milvus, self._dims)
        self._stop = asyncio.Event()
        embedder = with_adapter(self._pool, self._settings.model.adapter)  # this pipeline's adapter
        consumer = IngestConsumer(
            self._settings, embedder, sink, self._chunker, self._dims, self._special_tokens
        )
        log.info("%s joining group %s", self._name, self._settings.kafka.group_id)
        try:
            stats = await consumer.run(stop=self._stop, until_idle_s=until_idle_s)
        finally:
            sink.close()
        log.info(
            "%s done: %d events, %d chunks, %d dead letters, %.1f s busy (%s), %.1f events/s",
            self._name,
            stats.events,
            stats.chunks_written,
            stats.dead_letters,
            stats.busy_seconds(),
            BUSY,
            stats.events_per_second(),
        )
        return stats

    async def add_embedder(self, index: int, handle: ActorHandle) -> None:
        """Route embed calls to a new actor of the pool too (the autoscaler added it)."""
        actors_of(self._pool, "add_embedder").add_actor(index, handle)

    async def retire_embedder(self, index: int) -> None:
        """Stop routing to ``embedder-{index}`` (the newest) and return once its calls from here are done."""
        retired, _ = await actors_of(self._pool, "retire_embedder").retire_actor()
        if retired != index:
            log.warning("%s retired embedder-%d, the autoscaler embedder-%d", self._name, retired, index)

    async def stop(self) -> None:
        """Finish the units in flight (``consumer.shutdown_drain_s``), commit and return from ``run``."""
        if self._stop is not None:
            self._stop.set()


def _current_pool(settings: Settings, embedders: Sequence[ActorHandle], info: ModelInfo) -> EmbedderPool:
    """A pool over the embedder actors alive in the namespace now, by index (``embedders`` if none).

    A consumer restarted by Ray gets its original constructor arguments: the autoscaler may have
    added or retired embedders since, so it looks them up by name instead.
    """
    namespace = settings.ray.namespace
    indexes = sorted(
        int(a["name"].removeprefix("embedder-"))
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == namespace and a["name"].removeprefix("embedder-").isdigit()
    )
    if not indexes:
        return EmbedderPool(embedders, info, settings.pool)
    handles = [ray.get_actor(f"embedder-{i}", namespace=namespace) for i in indexes]
    pool = EmbedderPool(handles[:1], info, settings.pool)
    for index, handle in zip(indexes[1:], handles[1:], strict=True):
        pool.add_actor(index, handle)
    return pool


_SECRETS = (
    ("kafka", "sasl_password", "sasl_password_file"),
    ("milvus", "token", "token_file"),
    ("embedder", "api_key", "api_key_file"),
)
"""(section, secret, file holding it) of every secret a consumer actor uses."""


def without_secrets(settings: Settings) -> tuple[Settings, tuple[str, ...]]:
    """``settings`` with every secret value removed (Ray's token too: actors are inside the
    cluster), and the names of the secrets a consumer actor must find on its node."""
    needed = tuple(
        f"{section}.{secret}"
        for section, secret, _ in _SECRETS
        if getattr(getattr(settings, section), secret) is not None
    )
    update = {
        section: getattr(settings, section).model_copy(update={secret: None})
        for section, secret, _ in _SECRETS
    }
    update["ray"] = settings.ray.model_copy(update={"auth_token": None})
    return settings.model_copy(update=update), needed


def with_node_secrets(settings: Settings, needed: tuple[str, ...], who: str) -> Settings:
    """``settings`` with each ``needed`` secret taken from this node: its value or its file, from
    this process's environment (``PIPELINE_*``) and ``PIPELINE_CONFIG``; ConfigError naming what
    to set when one is not there."""
    if not needed:
        return settings
    node = load_settings()
    update: dict[str, Any] = {}
    for section, secret, file in _SECRETS:
        if f"{section}.{secret}" not in needed:
            continue
        here = getattr(node, section)
        if getattr(here, secret) is None and getattr(here, file) is None:
            variable = f"PIPELINE_{section.upper()}__{secret.upper()}"
            raise ConfigError(
                f"{who}: {section}.{secret} was given to the driver as a value, and secrets never "
                f"travel through Ray; give every node {variable} in the environment `ray start` runs "
                f"with, or use {section}.{file} (a path present on every node)"
            )
        update[section] = getattr(settings, section).model_copy(
            update={secret: getattr(here, secret), file: getattr(here, file)}
        )
    return settings.model_copy(update=update)


_RemoteConsumer = ray.remote(ConsumerActor)


def start_consumer_actors(runtime: Runtime, count: int) -> list[ActorHandle]:
    """Create ``count`` consumer actors (``consumer-{i}``) on ``runtime``'s embedders.

    Each asks Ray for ``scaling.consumer_cpus`` CPUs and ``scaling.consumer_resources``, so they go
    wherever those are (the embedders ask for GPUs).  Ray restarts one that dies.
    """
    settings = runtime.settings
    scaling = settings.scaling
    shared, secrets = without_secrets(settings)
    actors: list[ActorHandle] = []
    for index in range(count):
        options = _RemoteConsumer.options(
            name=f"consumer-{index}",
            namespace=settings.ray.namespace,
            num_cpus=scaling.consumer_cpus,
            resources=dict(scaling.consumer_resources),
            max_restarts=-1,
            max_task_retries=-1,
        )
        handles = runtime.pool.handles if isinstance(runtime.pool, EmbedderPool) else []  # remote: none
        handle = options.remote(shared, secrets, index, handles, runtime.pool.info, runtime.dims)
        actors.append(cast(ActorHandle, handle))
    log.info("started %d consumer actors", count)
    return actors


async def run_consumer_actors(
    runtime: Runtime,
    count: int,
    stop: asyncio.Event,
    until_idle_s: float | None = None,
    actors: list[ActorHandle] | None = None,
) -> GroupStats:
    """Run ``count`` consumer actors (or the given ``actors``) until ``stop`` or idle; every member's
    counters and busy time as it measured them, and their sums (:class:`GroupStats`).

    A consumer that dies is restarted by Ray and its ``run`` retried (the group rebalances
    meanwhile).  Raises the first error of a ``run``.  The actors are killed on return.
    """
    actors = actors if actors is not None else start_consumer_actors(runtime, count)
    runs: list[asyncio.Future[ConsumerStats]] = [
        asyncio.ensure_future(actor.run.remote(until_idle_s)) for actor in actors
    ]
    stopping = asyncio.ensure_future(stop.wait())
    try:
        pending: set[asyncio.Future[Any]] = set(runs)
        while pending:
            done, pending = await asyncio.wait({*pending, stopping}, return_when=asyncio.FIRST_COMPLETED)
            pending.discard(stopping)
            for run in done - {stopping}:
                run.result()  # the first failure stops the rest (finally) and propagates
            if stopping in done:
                await asyncio.gather(*(actor.stop.remote() for actor in actors))
                stopping = asyncio.ensure_future(asyncio.Event().wait())  # stop was asked once
        results = [run.result() for run in runs]
    finally:
        stopping.cancel()
        for run in runs:
            run.cancel()
        await asyncio.gather(*runs, stopping, return_exceptions=True)  # every ref's outcome is read
        for actor in actors:
            ray.kill(actor, no_restart=True)
    # Members' clocks are not comparable (other nodes): only each member's own busy time was measured.
    return GroupStats(tuple(results))
