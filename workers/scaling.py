"""Adding and removing embedder actors of a running pool, without losing work in flight.

Growing: a new ``embedder-{i}`` is created, awaited until its model is loaded (and checked to
serve the same model), then routed to.  When the cluster cannot place the actors wanted, the Ray
autoscaler is asked for the missing GPU (or CPU) bundles with
``ray.autoscaler.sdk.request_resources``, so it adds nodes; the actor starts once one joins.
Shrinking: the highest-indexed actor stops receiving calls, every call already sent to it is
awaited (in every pool that routes to it), and only then is it killed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from workers.errors import ConfigError, EmbedderUnavailable
from workers.model.embedding_model import ModelInfo
from workers.pool import EmbedderPool
from workers.settings import BatchSettings, ModelSettings, PoolSettings
from workers.spawn import actor_resources, spawn_embedder

log = logging.getLogger(__name__)

Added = Callable[[int, ActorHandle], Awaitable[None]]
"""Told about each new actor (index, handle) once it is ready, e.g. to route other pools to it."""
Retiring = Callable[[int], Awaitable[None]]
"""Asked to stop routing to actor ``index`` and return once the calls sent to it are done."""


class PoolScaler:
    """Resizes ``pool`` (and the pools of ``added`` / ``retiring``) to a target number of actors."""

    def __init__(
        self,
        pool: EmbedderPool,
        model: ModelSettings,
        batching: BatchSettings,
        settings: PoolSettings,
        namespace: str,
        *,
        added: Sequence[Added] = (),
        retiring: Sequence[Retiring] = (),
    ) -> None:
        self._pool = pool
        self._model = model.loaded()  # what actors load: not the pipeline's choice of adapter
        self._batching = batching
        self._settings = settings
        self._namespace = namespace
        self._added = list(added)
        self._retiring = list(retiring)
        self._indexes = set(range(pool.size))
        self._gpus = ray.cluster_resources().get("GPU", 0.0) > 0
        self._requested = False

    @property
    def size(self) -> int:
        return self._pool.size

    async def scale_to(self, target: int) -> None:
        """Add or remove actors until the pool has ``target``; raises when a new actor fails to start.

        Raises EmbedderUnavailable when a new actor is not ready within ``ready_timeout_s`` (e.g. no
        node with its resources joined), ConfigError when it serves another model than the pool.
        """
        if target < 1:
            raise ConfigError("an embedder pool keeps at least one actor")
        self._request_cluster(target)
        while self._pool.size < target:
            await self._add()
        while self._pool.size > target:
            await self._remove()

    def _request_cluster(self, target: int) -> None:
        """Ask the Ray autoscaler for ``target`` actors' bundles when the cluster has too few (or had)."""
        from ray.autoscaler.sdk import request_resources

        options = actor_resources(self._settings, self._gpus)
        bundle = {"GPU" if self._gpus else "CPU": options.get("num_gpus", options.get("num_cpus", 0.0))}
        bundle |= options.get("resources", {})
        cluster = ray.cluster_resources()
        short = any(cluster.get(name, 0.0) < amount * target for name, amount in bundle.items())
        if short or self._requested:  # a standing request is lowered again when the pool shrinks
            log.info("asking the Ray autoscaler for %d bundles of %s", target, bundle)
            request_resources(bundles=[bundle] * target)
            self._requested = True

    async def _add(self) -> None:
        index = min(set(range(len(self._indexes) + 1)) - self._indexes)
        handle = spawn_embedder(
            self._model, self._batching, self._settings, index, self._namespace, gpus=self._gpus
        )
        log.info("adding embedder-%d", index)
        try:
            info: ModelInfo = await asyncio.wait_for(handle.ready.remote(), self._settings.ready_timeout_s)
        except (TimeoutError, RayActorError) as exc:
            ray.kill(handle, no_restart=True)
            raise EmbedderUnavailable(f"embedder-{index} did not start: {exc!r}") from exc
        if info != self._pool.info:
            ray.kill(handle, no_restart=True)
            raise ConfigError(f"embedder-{index} serves {info}, the pool {self._pool.info}")
        self._pool.add_actor(index, handle)
        self._indexes.add(index)
        for hook in self._added:
            await hook(index, handle)
        log.info("embedder-%d ready; pool has %d actors", index, self._pool.size)

    async def _remove(self) -> None:
        index, handle = await self._pool.retire_actor()
        for hook in self._retiring:
            await hook(index)
        ray.kill(handle, no_restart=True)
        self._indexes.discard(index)
        log.info("removed embedder-%d after its calls finished; pool has %d actors", index, self._pool.size)
