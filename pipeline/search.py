"""`search`: embed a query on the embedder pool and look it up in one dimension replica."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.config import Settings
from pipeline.sink import Hit, MilvusSink
from workers.errors import ConfigError
from workers.pool import EmbedderPool
from workers.settings import format_input


@dataclass(frozen=True)
class QueryResult:
    """The hits of one query on one replica."""

    query: str
    dim: int
    hits: list[Hit]


async def search(
    settings: Settings,
    pool: EmbedderPool,
    queries: Sequence[str],
    dim: int | None = None,
    top_k: int = 5,
    instruction: str | None = None,
) -> list[QueryResult]:
    """Embed ``queries`` (with ``instruction``, if any); the ``top_k`` hits of each on replica ``dim``."""
    native = pool.info.native_dim
    dims = settings.embedding.replica_dims(native)
    dim = dim or native
    if dim not in dims:
        raise ConfigError(f"no replica of dimension {dim}; the replicas are {list(dims)}")
    texts = [format_input(settings.model, q, instruction) for q in queries]
    vectors = (await pool.embed(texts, (dim,)))[dim]
    sink = MilvusSink(settings.milvus, dims)
    try:
        hits = await asyncio.to_thread(sink.search, dim, vectors, top_k)
    finally:
        sink.close()
    return [QueryResult(q, dim, h) for q, h in zip(queries, hits, strict=True)]


def format_results(results: Sequence[QueryResult], snippet_chars: int = 120) -> str:
    """Human-readable hits: score, document id, chunk and a one-line snippet."""
    lines: list[str] = []
    for result in results:
        lines.append(f'query: "{result.query}"  (replica {result.dim}d)')
        if not result.hits:
            lines.append("  no hits")
        for rank, hit in enumerate(result.hits, 1):
            snippet = " ".join((hit.text or "").split())
            if len(snippet) > snippet_chars:
                snippet = snippet[: snippet_chars - 1] + "…"
            lines.append(f"  {rank}. {hit.score:.3f}  {hit.doc_id}#{hit.chunk_index}  {snippet}")
    return "\n".join(lines)
