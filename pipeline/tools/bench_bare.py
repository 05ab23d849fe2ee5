"""The bare-embedder phase of the benchmarks: chunks sent straight to the embedder pool, no Kafka, no Milvus.

``bench --end-to-end`` and ``bench --scaling`` time the pool this way: the chunks the consumer would
embed, in requests of the consumer's size, with as many tokens in flight as the consumers allow and
the actors hold (:func:`bare_inflight_tokens`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Sequence

from pipeline.ingest.chunking import Chunker
from pipeline.runtime.embedders import EmbedderBackend
from pipeline.settings import Settings
from pipeline.tools.bench_breakdown import actor_counters, difference
from workers.model.inputs import ModelInput, TokenizedText
from workers.prompts import format_input
from workers.settings import ModelSettings

Requests = list[tuple[list[ModelInput], int]]
"""Embed requests: the model inputs of each, and its tokens."""


def bare_inflight_tokens(settings: Settings, members: int, actors: int) -> int:
    """Tokens the bare phase keeps in flight: as many as the pipeline's consumers together may (at
    least :meth:`~pipeline.settings.ingest.ConsumerSettings.largest_inflight_tokens` per embedder
    actor), capped, for embedder actors, at what they hold without refusing: each its queue
    (``batching.max_queued_tokens``) and its held requests (``batching.max_pending_requests`` of up
    to ``consumer.max_request_tokens``).  Past that the surplus is only refused and sent again, and
    the refusals cost the actor's host time: one H200, 0.6B, 2,097,152 tokens in flight against one
    actor that holds 786,432 refused ~4,000 requests a round and took 16.3 s where 524,288 in flight
    took 10.7 s (tests/perf/results/README.md)."""
    wanted = settings.consumer.largest_inflight_tokens() * max(1, members, actors)
    if settings.embedder.backend != "actors":
        return wanted
    batching = settings.batching
    held = batching.max_queued_tokens + batching.max_pending_requests * settings.consumer.max_request_tokens
    return min(wanted, held * max(1, actors))


def embed_requests(
    chunker: Chunker,
    model: ModelSettings,
    special_tokens: int,
    limit: int,
    texts: Sequence[str],
    with_ids: bool = False,
) -> tuple[Requests, int]:
    """The chunks the consumer would embed, grouped into requests of at most ``limit`` tokens each.

    Returns the requests (texts as the model reads them, each with the chunker's token ids when
    ``with_ids``, and their tokens with ``special_tokens`` per chunk) and the number of chunks.
    """
    requests: Requests = []
    batch: list[ModelInput] = []
    tokens = chunks = 0
    for text in texts:
        for chunk in chunker.split(text):
            size = chunk.token_count + special_tokens
            if batch and tokens + size > limit:
                requests.append((batch, tokens))
                batch, tokens = [], 0
            text = format_input(model, chunk.text, None)
            batch.append(
                TokenizedText(text, chunk.token_ids) if with_ids and chunk.token_ids is not None else text
            )
            tokens += size
            chunks += 1
    if batch:
        requests.append((batch, tokens))
    return requests, chunks


async def time_embedder(
    pool: EmbedderBackend, dims: tuple[int, ...], budget: int, requests: Requests
) -> float:
    """Seconds for ``pool`` to embed every request, with at most ``budget`` tokens in flight."""
    room = asyncio.Condition()
    inflight = 0

    async def embed(texts: list[ModelInput], tokens: int) -> None:
        nonlocal inflight
        try:
            await pool.embed(texts, dims)
        finally:
            async with room:
                inflight -= tokens
                room.notify_all()

    def fits(tokens: int) -> bool:
        return inflight == 0 or inflight + tokens <= budget

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for texts, tokens in requests:
            async with room:
                await room.wait_for(functools.partial(fits, tokens))
                inflight += tokens
            group.create_task(embed(texts, tokens))
    return time.perf_counter() - started


async def time_embedder_round(
    pool: EmbedderBackend, dims: tuple[int, ...], budget: int, requests: Requests
) -> tuple[float, dict[str, float]]:
    """:func:`time_embedder`'s seconds, and what the actors counted over the round
    (:data:`~pipeline.tools.bench_breakdown.ACTOR_COUNTERS`): where a slow round's time went."""
    before = await actor_counters(pool)
    seconds = await time_embedder(pool, dims, budget, requests)
    return seconds, difference(await actor_counters(pool), before)
