"""Creating, finding and killing embedder actors: ``embedder-{i}`` named actors in a Ray namespace.

:func:`start_embedders` sizes the pool to the cluster (one actor per ``gpus_per_actor`` GPUs,
else ``num_actors``), asks Ray for each actor's resources and waits until every actor has
loaded the model; :func:`find_embedders` finds the actors another process started.  Importing
this module imports neither torch nor transformers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, cast

import ray
from ray.actor import ActorHandle
from ray.exceptions import ActorAlreadyExistsError, RayActorError

from workers.actor import EmbedderActor
from workers.errors import ConfigError, EmbedderUnavailable
from workers.model.embedding_model import ModelInfo
from workers.settings import BatchSettings, ModelSettings, PoolSettings

log = logging.getLogger(__name__)

# Concurrent calls one actor runs; an async actor's calls only wait on its batcher, so this merely has
# to exceed what the drivers keep in flight (the batcher's queue bound refuses work long before).
_MAX_CONCURRENCY = 1024

_RemoteEmbedder = ray.remote(EmbedderActor)


async def start_embedders(
    model: ModelSettings,
    batching: BatchSettings,
    pool: PoolSettings,
    *,
    namespace: str | None = None,
    actor_class: type[EmbedderActor] = EmbedderActor,
) -> tuple[list[ActorHandle], ModelInfo]:
    """Start the actors (the caller has joined Ray) and wait until each has loaded the model.

    One actor per ``gpus_per_actor`` GPUs of the cluster unless ``pool.num_actors`` is set, at
    least one; without GPUs each actor takes ``cpus_per_actor`` CPUs.  The actors are named
    ``embedder-{i}`` in ``namespace`` (default: the driver's, from ``ray.init``).  Raises
    ConfigError when a model fails to load, the names are taken, or the actors disagree about
    the model; EmbedderUnavailable when they are not ready within ``ready_timeout_s``.  Nothing
    is left running when it raises.  ``actor_class``: an EmbedderActor subclass to run instead
    (tests inject faults with one).
    """
    gpus = ray.cluster_resources().get("GPU", 0.0)
    count = pool.num_actors or max(1, int(gpus // pool.gpus_per_actor))
    namespace = namespace or ray.get_runtime_context().namespace
    handles: list[ActorHandle] = []
    try:
        for index in range(count):
            handles.append(
                spawn_embedder(
                    model, batching, pool, index, namespace, gpus=bool(gpus), actor_class=actor_class
                )
            )
    except ActorAlreadyExistsError as exc:
        kill_embedders(handles)
        raise ConfigError(
            f"Ray namespace {namespace!r} already has embedder actors: another consumer runs there; "
            "give each deployment its own ray.namespace"
        ) from exc
    log.info("starting %d embedder actors with %s each", count, actor_resources(pool, bool(gpus)))
    infos = await wait_ready(handles, pool.ready_timeout_s)
    if any(info != infos[0] for info in infos):
        kill_embedders(handles)
        raise ConfigError(f"embedder actors disagree about the model: {infos}")
    log.info("embedder pool ready: %d actors, %s", count, infos[0])
    return handles, infos[0]


async def find_embedders(namespace: str, timeout_s: float) -> tuple[list[ActorHandle], ModelInfo] | None:
    """The ``embedder-*`` actors alive in ``namespace`` (sorted by name) and the model they serve,
    once ready; None when there are none."""
    names = sorted(
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == namespace and a["name"].startswith("embedder-")
    )
    if not names:
        return None
    handles = [ray.get_actor(name, namespace=namespace) for name in names]
    infos = await wait_ready(handles, timeout_s)
    return handles, infos[0]


def actor_resources(pool: PoolSettings, gpus: bool) -> dict[str, Any]:
    """The Ray resource options of one embedder actor: GPUs on a GPU cluster, else CPUs; plus custom ones."""
    resources: dict[str, Any] = (
        {"num_gpus": pool.gpus_per_actor} if gpus else {"num_cpus": pool.cpus_per_actor}
    )
    if pool.actor_resources:
        resources["resources"] = dict(pool.actor_resources)
    return resources


def spawn_embedder(
    model: ModelSettings,
    batching: BatchSettings,
    pool: PoolSettings,
    index: int,
    namespace: str,
    *,
    gpus: bool,
    actor_class: type[EmbedderActor] = EmbedderActor,
) -> ActorHandle:
    """Create ``embedder-{index}`` in ``namespace``; it loads its model in the background.

    ``actor_class``: an EmbedderActor subclass to run instead (tests inject faults with one).
    """
    remote = _RemoteEmbedder if actor_class is EmbedderActor else ray.remote(actor_class)
    options = remote.options(
        name=f"embedder-{index}",
        namespace=namespace,
        max_restarts=pool.max_restarts,
        max_concurrency=_MAX_CONCURRENCY,
        **actor_resources(pool, gpus),
    )
    return cast(ActorHandle, options.remote(model, batching, index, namespace))


async def wait_ready(handles: list[ActorHandle], timeout: float) -> list[ModelInfo]:
    """Every actor's ModelInfo; on the first failure or the timeout kills them all and raises."""
    calls: list[asyncio.Future[ModelInfo]] = [asyncio.ensure_future(h.ready.remote()) for h in handles]
    done, pending = await asyncio.wait(calls, timeout=timeout, return_when=asyncio.FIRST_EXCEPTION)
    failed = next((call for call in done if call.exception() is not None), None)
    if failed is None and not pending:
        return [call.result() for call in calls]
    for call in pending:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)  # nothing left unawaited, whatever happened
    kill_embedders(handles)
    if failed is None:
        raise EmbedderUnavailable(f"embedder actors were not ready within {timeout:.0f}s (enough GPUs/CPUs?)")
    exc = failed.exception()
    if isinstance(exc, RayActorError) and exc.actor_init_failed:
        raise ConfigError(f"an embedder actor could not load the model: {exc}") from exc
    raise EmbedderUnavailable(f"an embedder actor failed while starting: {exc}") from exc


def kill_embedders(handles: Sequence[ActorHandle]) -> None:
    """Kill ``handles`` for good (no restart)."""
    for handle in handles:
        ray.kill(handle, no_restart=True)
