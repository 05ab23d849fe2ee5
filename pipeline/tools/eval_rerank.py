"""eval-recall's reranker figure: the latency a reranker adds to a search, when one is configured.

Each query's top ``candidates`` chunks on the native replica (their text fetched, as ``search --rerank``
fetches them) are scored by the reranker actors, one query per call, as a served ``search --rerank``
would; the report gets the p50 / p95 / mean milliseconds of those calls beside the search latencies.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.search.replicas import ReplicaSearch
from pipeline.search.rerank import Reranker
from pipeline.search.routing import Strategy


async def measure_rerank(
    reranker: Reranker,
    searcher: ReplicaSearch,
    native_dim: int,
    queries: Sequence[str],
    query_vectors: dict[int, np.ndarray],
    candidates: int,
    model: str,
) -> dict[str, Any]:
    """Milliseconds the reranker takes per query over ``candidates`` hits of the native replica."""
    latencies: list[float] = []
    pairs = 0
    for i, query in enumerate(queries):
        one = {native_dim: query_vectors[native_dim][i : i + 1]}
        [hits] = await asyncio.to_thread(searcher.run, Strategy(native_dim), one, candidates, ("text",))
        texts = [hit.text or "" for hit in hits]
        started = time.perf_counter()
        await reranker.score(query, texts)
        latencies.append((time.perf_counter() - started) * 1000)
        pairs += len(texts)
    return {
        "model": model,
        "candidates": candidates,
        "queries": len(latencies),
        "pairs": pairs,
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p95_ms": round(float(np.percentile(latencies, 95)), 2),
        "mean_ms": round(float(np.mean(latencies)), 2),
    }


def rerank_line(meta: dict[str, Any]) -> list[str]:
    """The report table's line on the reranker (none when no reranker was measured)."""
    rerank = meta.get("rerank")
    if not rerank:
        return []
    return [
        "",
        f"reranker {rerank['model']} adds p50 {rerank['p50_ms']:.1f} ms, p95 {rerank['p95_ms']:.1f} ms per "
        f"query (top {rerank['candidates']} of the native replica, {rerank['queries']} queries, one a call)",
    ]
