"""The reranker stage of the read side: re-order a search's shortlist by a reranker's scores.

``search --rerank N`` asks any strategy for the top N chunks, scores each (query, chunk text) pair on
the reranker actors (:class:`workers.reranker_pool.RerankerPool`) and keeps the ``top_k`` best by
rerank score; the vector score stays with each hit, so both can be shown.  Importing this module
imports neither torch nor transformers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from typing import Protocol

import numpy as np

from pipeline.search.replicas import QueryResult
from pipeline.settings import Settings
from workers.errors import ConfigError


class Reranker(Protocol):
    """What the read side needs of a reranker (:class:`workers.reranker_pool.RerankerPool` is one)."""

    async def score(
        self, query: str, documents: Sequence[str], instruction: str | None = None
    ) -> list[float]: ...


def require_reranker(settings: Settings) -> None:
    """ConfigError, saying how to configure one, unless ``settings`` has a reranker section."""
    if settings.reranker is None:
        raise ConfigError(
            "no reranker is configured: set [reranker] name_or_path (or PIPELINE_RERANKER__NAME_OR_PATH)"
        )


@contextlib.asynccontextmanager
async def open_reranker(settings: Settings) -> AsyncIterator[Reranker]:
    """Reranker actors of ``settings.reranker`` on the Ray cluster this process joined, stopped on exit."""
    from workers.reranker_pool import RerankerPool

    require_reranker(settings)
    assert settings.reranker is not None
    pool = await RerankerPool.start(settings.reranker, namespace=settings.ray.namespace)
    try:
        yield pool
    finally:
        pool.shutdown()


async def rerank_results(
    reranker: Reranker, results: Sequence[QueryResult], top_k: int, instruction: str | None = None
) -> list[QueryResult]:
    """Each result's hits re-ordered by rerank score (best first, ties keep the vector order), at most
    ``top_k``, with their scores in ``rerank_scores``; the queries are scored side by side.  A hit
    without text (not fetched) is scored as an empty document."""

    async def one(result: QueryResult) -> QueryResult:
        scores = np.asarray(
            await reranker.score(result.query, [h.text or "" for h in result.hits], instruction)
        )
        order = np.argsort(-scores, kind="stable")[:top_k]
        return replace(
            result,
            hits=[result.hits[i] for i in order],
            rerank_scores=tuple(float(scores[i]) for i in order),
            strategy=f"{result.strategy} + rerank" if result.strategy else "rerank",
        )

    return list(await asyncio.gather(*(one(result) for result in results)))


class RerankTimer:
    """Milliseconds spent reranking, per query (for eval-recall's report)."""

    def __init__(self) -> None:
        self.samples_ms: list[float] = []

    async def rerank(
        self, reranker: Reranker, results: Sequence[QueryResult], top_k: int, instruction: str | None = None
    ) -> list[QueryResult]:
        """:func:`rerank_results`, timed: one sample per query of the call (the call's time / queries)."""
        started = time.perf_counter()
        out = await rerank_results(reranker, results, top_k, instruction)
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.samples_ms += [elapsed_ms / max(1, len(results))] * len(results)
        return out
