"""Assembling the read side: the query pool and replicas of ``search``, ``eval-recall`` and ``serve``.

Queries share a running consumer's embedder actors when there are some in ``ray.namespace``;
otherwise a pool of their own is started (and stopped on exit).  The replica dims are resolved
once here, against the model the actors serve, and carried by the sink.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from pipeline.milvus.connection import MilvusConnection
from pipeline.milvus.model_stamp import recorded_adapter, stamp_of
from pipeline.milvus.sink import MilvusSink
from pipeline.runtime.embedders import EmbedderBackend, start_embedder
from pipeline.runtime.ray_cluster import connect_ray
from pipeline.runtime.version_follower import VersionFollower
from pipeline.runtime.versions import readable_replicas
from pipeline.settings import Settings
from workers.adapter_view import AdaptablePool, AdapterView, with_adapter
from workers.pool import EmbedderPool
from workers.sharing import follow_embedders


@dataclass(frozen=True)
class QuerySide:
    """An embedder pool to embed queries on and the replicas to search."""

    pool: EmbedderBackend
    sink: MilvusSink
    adapter: str | None = None
    """The LoRA adapter queries of the replicas are embedded with: model.adapter, else what they record."""

    @property
    def embedder(self) -> AdaptablePool | AdapterView:
        """The pool through :attr:`adapter`: what queries of these replicas are embedded on."""
        return with_adapter(self.pool, self.adapter)


@contextlib.asynccontextmanager
async def open_query_side(
    settings: Settings,
    purpose: str,
    base: Settings | None = None,
    *,
    follow: bool = False,
    check_replicas: bool = True,
) -> AsyncIterator[QuerySide]:
    """The running actors in ``ray.namespace`` (or a private pool named after ``purpose``, stopped on
    exit) and a sink over the replicas ``settings`` describe that exist; both released on exit.

    ``follow``: the attached pool keeps up with actors that appear, restart or go in the namespace
    (autoscaling, another worker), every ``pool.follow_interval_s``, until exit.
    ``settings`` name the version read, ``base`` (default ``settings``) are the settings as configured.
    ConfigError when a replica was made by another model than the pool's (vectors of another space);
    ``check_replicas=False`` skips that check, for a caller that reads replicas of its own (eval-recall).
    The side's adapter is ``model.adapter``, else the one the replicas record (ConfigError when the actors
    do not load it, or when ``model.adapter`` differs from what they record).
    """
    connect_ray(settings)
    actors = None
    if settings.embedder.backend == "actors":  # else a remote endpoint: nothing to attach to
        actors = await EmbedderPool.attach(settings.pool, settings.ray.namespace)
    owned = actors is None
    following: asyncio.Task[None] | None = None
    pool: EmbedderBackend
    if actors is None:
        private = settings.model_copy(update={"pool": settings.pool.model_copy(update={"detached": False})})
        pool, dims = await start_embedder(
            private, namespace=f"{settings.ray.namespace}-{purpose}-{uuid.uuid4().hex[:8]}"
        )
    else:
        pool = actors
        dims = settings.replicas.replica_dims(pool.info.native_dim)
    adapter = settings.model.adapter
    if check_replicas:
        try:
            if adapter is None:  # follow what the replicas record
                adapter = await asyncio.to_thread(_recorded_adapter, settings, dims)
            stamp = stamp_of(pool.info, settings.model, adapter)
            dims = await asyncio.to_thread(readable_replicas, base or settings, settings, stamp, dims)
        except BaseException:
            if owned:
                pool.shutdown()
            raise
    if follow and actors is not None:
        following = asyncio.create_task(
            follow_embedders(actors, settings.ray.namespace, settings.pool.follow_interval_s),
            name="follow-embedders",
        )
    sink = MilvusSink(settings.milvus, dims)
    try:
        yield QuerySide(pool, sink, adapter)
    finally:
        if following is not None:
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
        sink.close()
        if owned:
            pool.shutdown()


def _recorded_adapter(settings: Settings, dims: tuple[int, ...]) -> str | None:
    connection = MilvusConnection(settings.milvus)
    try:
        prefix = settings.milvus.collection_prefix
        return recorded_adapter(connection, {dim: f"{prefix}_{dim}" for dim in dims})
    finally:
        connection.close()


async def serve(
    settings: Settings, host: str | None = None, port: int | None = None, base: Settings | None = None
) -> None:
    """Serve the HTTP API (:mod:`pipeline.search.api`) until SIGINT or SIGTERM.  ``settings`` name the
    version served, ``base`` (default ``settings``) are the settings as configured.  ConfigError, before
    anything starts, when ``host`` is beyond loopback without API keys (:func:`check_exposure`)."""
    from aiohttp import web

    from pipeline.search.api import Api
    from pipeline.search.auth import check_exposure, warn_if_open
    from pipeline.search.rerank import open_reranker
    from workers.model.tokenizer import load_text_tokenizer

    host = host or settings.api.host
    port = settings.api.port if port is None else port
    keys = check_exposure(settings.api, host)  # before Ray or the model: a refusal costs nothing
    warn_if_open(keys, host)
    async with contextlib.AsyncExitStack() as stack:
        side = await stack.enter_async_context(open_query_side(settings, "serve", base, follow=True))
        reranker = await stack.enter_async_context(open_reranker(settings)) if settings.reranker else None
        tokenizer = await asyncio.to_thread(load_text_tokenizer, settings.model)
        prefix = settings.milvus.collection_prefix
        follower = VersionFollower(base or settings, side.pool.info, side.sink, prefix, adapter=side.adapter)
        api = Api(
            settings,
            side.pool,
            tokenizer,
            side.sink,
            follow=follower.sink,
            keys=keys,
            adapter=side.adapter,
            reranker=reranker,
        )
        runner = api.runner()
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
            print(f"serving {side.pool.info.name} on {runner.addresses} (Ctrl-C stops)", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        finally:
            await runner.cleanup()
            follower.close()
