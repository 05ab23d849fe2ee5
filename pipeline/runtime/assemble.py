"""Assembling a runtime from settings: join Ray, start the pool, open the replicas, check the configuration.

The replica dims are resolved here, once, against the model the actors loaded, and handed to
every part that needs them (consumers, sink, search).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from pipeline.ingest.chunking import Chunker
from pipeline.ingest.consumer import IngestConsumer
from pipeline.ingest.kafka import ensure_topics
from pipeline.ingest.retry import Backoff
from pipeline.milvus.errors import SinkUnavailable
from pipeline.milvus.model_stamp import stamp_of
from pipeline.milvus.sink import MilvusSink
from pipeline.runtime.embedders import EmbedderBackend, start_embedder
from pipeline.runtime.ray_cluster import connect_ray
from pipeline.runtime.versions import prepare_replicas
from pipeline.settings import Settings
from workers.actor import EmbedderActor
from workers.adapter_view import with_adapter
from workers.errors import ConfigError
from workers.model.embedding_model import ModelInfo
from workers.model.tokenizer import TextTokenizer, load_text_tokenizer

log = logging.getLogger(__name__)

# Long enough for a few paragraphs, short enough that a hit points at the relevant passage.
DEFAULT_CHUNK_TOKENS = 512


@dataclass
class Runtime:
    """Everything a running ingestion process holds; :meth:`close` releases it."""

    settings: Settings
    pool: EmbedderBackend
    sink: MilvusSink
    chunker: Chunker
    dims: tuple[int, ...]
    special_tokens: int

    def new_consumer(self) -> IngestConsumer:
        """A fresh consumer-group member that shares this runtime's pool and sink."""
        embedder = with_adapter(self.pool, self.settings.model.adapter)  # this pipeline's adapter
        return IngestConsumer(
            self.settings, embedder, self.sink, self.chunker, self.dims, self.special_tokens
        )

    def close(self) -> None:
        """Close the sink; the actors stop unless detached (then they stay up for the next worker)."""
        self.pool.release()
        self.sink.close()


def make_chunker(settings: Settings, tokenizer: TextTokenizer, info: ModelInfo) -> Chunker:
    """The chunker for ``settings`` (keeping token ids for the actors: ``consumer.send_token_ids``);
    raises ConfigError when its chunks cannot fit the model."""
    room = info.max_length - tokenizer.num_special_tokens
    max_tokens = settings.chunking.max_tokens or min(room, DEFAULT_CHUNK_TOKENS)
    if max_tokens > room:
        raise ConfigError(
            f"chunking.max_tokens={max_tokens} does not fit the model: "
            f"{info.name} takes {info.max_length} tokens including "
            f"{tokenizer.num_special_tokens} special ones; use at most {room}"
        )
    keep_ids = settings.consumer.send_token_ids and settings.embedder.backend == "actors"
    return Chunker(tokenizer, max_tokens, settings.chunking.overlap_tokens, keep_token_ids=keep_ids)


async def _ensure_replicas(
    sink: MilvusSink, settings: Settings, prepare: Callable[[], None], attempts: int = 6
) -> None:
    """Create or check the replica collections (``prepare``, then the sink's own check), waiting out a
    Milvus that is still starting."""
    backoff = Backoff(base=1.0, cap=settings.consumer.retry_backoff_max_s)
    for attempt in range(1, attempts + 1):
        try:
            await asyncio.to_thread(prepare)
            await asyncio.to_thread(sink.ensure_collections)
            return
        except SinkUnavailable as exc:
            if attempt == attempts:
                raise
            delay = backoff.next(exc.retry_after)
            log.warning("Milvus not reachable yet (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)


async def build_runtime(
    settings: Settings,
    actor_class: type[EmbedderActor] = EmbedderActor,
    *,
    base: Settings | None = None,
    adopt: bool = False,
) -> Runtime:
    """Start the pool, open every replica and the topics, and check the settings fit together.

    ``actor_class``: an EmbedderActor subclass for the pool (tests inject faults with one).
    ``settings`` name the version written; ``base`` (default ``settings``) are the settings as
    configured, version 1 (see :mod:`pipeline.runtime.versions`).  The replicas are checked by
    :func:`~pipeline.runtime.versions.prepare_replicas` (``adopt``: stamp unstamped ones): ConfigError
    for replicas another model made, or a replica added beside ones that hold rows.

    The driver's tokenizer loads and the topics are created while the actors load the model:
    a restarted process is back sooner (its partitions wait for it meanwhile).
    """
    connect_ray(settings)
    tokenizer_loading = asyncio.create_task(asyncio.to_thread(load_text_tokenizer, settings.model))
    topics = asyncio.create_task(ensure_topics(settings.kafka))
    try:
        pool, dims = await start_embedder(settings, settings.ray.namespace, actor_class, tokenizer_loading)
    except BaseException:
        await _settle(tokenizer_loading, topics)
        raise
    try:
        tokenizer = await tokenizer_loading
        await topics
        chunker = make_chunker(settings, tokenizer, pool.info)
        sink = MilvusSink(settings.milvus, dims)
        stamp = stamp_of(pool.info, settings.model, settings.model.adapter)
        prepare = partial(prepare_replicas, base or settings, settings, stamp, dims, adopt=adopt)
        await _ensure_replicas(sink, settings, prepare)
    except BaseException as exc:
        await _settle(tokenizer_loading, topics)
        if isinstance(exc, ConfigError) and pool.started_here:
            pool.shutdown()  # refused (e.g. another model made the replicas): no worker will use them
        else:
            pool.release()
        raise
    log.info("ready: model %s, replicas %s", pool.info.name, list(dims))
    return Runtime(settings, pool, sink, chunker, dims, tokenizer.num_special_tokens)


async def _settle(*tasks: asyncio.Task[Any]) -> None:
    """Wait for side tasks of a failed start; their own errors are secondary to the one raised."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
