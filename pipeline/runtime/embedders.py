"""The embedder a process uses, whichever backend: the interface pipeline/ needs, and starting one.

:class:`workers.pool.EmbedderPool` (Ray actors, ``embedder.backend = "actors"``) and
:class:`pipeline.remote.embedder.RemoteEmbedder` (an OpenAI-compatible endpoint, ``"openai"``) both
satisfy :class:`EmbedderBackend`; only consumer actors and autoscaling need the actors themselves
(:func:`actors_of`).  :func:`start_pool` starts the actors alone; :func:`stop_embedders` stops a
namespace's (detached ones outlive every worker).
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar

from pipeline.runtime.ray_cluster import connect_ray
from pipeline.settings import Settings
from workers.actor import EmbedderActor
from workers.adapter_view import AdaptablePool
from workers.errors import ConfigError
from workers.model.tokenizer import TextTokenizer
from workers.pool import EmbedderPool


class EmbedderBackend(AdaptablePool, Protocol):
    """What ingestion, search and the API use of an embedder: :class:`AdaptablePool`'s ``info``,
    ``embed`` and ``embed_queries`` (each with its LoRA ``adapter``), and the members below."""

    @property
    def size(self) -> int: ...

    @property
    def started_here(self) -> bool: ...

    async def stats(self) -> list[dict[str, Any]]: ...

    def release(self) -> None: ...

    def shutdown(self) -> None: ...


Started = TypeVar("Started", bound=EmbedderBackend)


async def start_embedder(
    settings: Settings,
    namespace: str | None = None,
    actor_class: type[EmbedderActor] = EmbedderActor,
    tokenizer: Awaitable[TextTokenizer] | None = None,
) -> tuple[EmbedderBackend, tuple[int, ...]]:
    """The embedder ``settings.embedder.backend`` names, started, and the replica dims resolved against
    its model's native dimension (ConfigError when they do not fit; the embedder is then released).

    ``tokenizer``: the model's tokenizer being loaded by the caller, for the remote backend to count
    with (loaded here otherwise; never twice at once: transformers' lazy imports race)."""
    if settings.embedder.backend == "actors":
        return await start_pool(settings, namespace=namespace, actor_class=actor_class)
    from pipeline.remote.startup import start_remote_embedder

    remote = await start_remote_embedder(settings, None if tokenizer is None else await tokenizer)
    return _with_replica_dims(remote, settings)


async def start_pool(
    settings: Settings, namespace: str | None = None, actor_class: type[EmbedderActor] = EmbedderActor
) -> tuple[EmbedderPool, tuple[int, ...]]:
    """Start the embedder actors and resolve the replica dims against the model's native dimension."""
    pool = await EmbedderPool.start(
        settings.model, settings.batching, settings.pool, namespace=namespace, actor_class=actor_class
    )
    return _with_replica_dims(pool, settings)


def _with_replica_dims(embedder: Started, settings: Settings) -> tuple[Started, tuple[int, ...]]:
    """``embedder`` and the replica dims resolved against its model's native dimension; ConfigError
    when they do not fit, the embedder then released."""
    try:
        return embedder, settings.replicas.replica_dims(embedder.info.native_dim)
    except ConfigError:
        embedder.release()
        raise


def stop_embedders(settings: Settings) -> list[str]:
    """Kill the embedder actors of ``ray.namespace`` (detached ones outlive every worker); their names.

    Workers still running there lose their actors: stop them first.
    """
    import ray

    from workers.spawn import kill_embedders, list_embedders

    connect_ray(settings)
    handles, names = [], []
    for name in list_embedders(settings.ray.namespace).values():
        try:
            handles.append(ray.get_actor(name, namespace=settings.ray.namespace))
            names.append(name)
        except ValueError:  # gone since the listing
            continue
    kill_embedders(handles)
    return names


def actors_of(backend: EmbedderBackend, what: str) -> EmbedderPool:
    """``backend`` as the pool of Ray actors that ``what`` needs; ConfigError for another backend."""
    if not isinstance(backend, EmbedderPool):
        raise ConfigError(f"{what} needs embedder.backend 'actors' (the embedder is {backend.info.device})")
    return backend
