"""`search`: embed queries on the embedder pool and look them up in a replica, directly or by funnel.

* **Direct**: the ``top_k`` nearest chunks on one dimension replica.
* **Funnel** (Matryoshka funnel search): shortlist ``top_k × factor`` chunks on a small replica, fetch
  their full-dimension vectors **by primary key** from the native replica (point lookups, no scan of
  it), re-score by cosine against the full-dimension query and keep the ``top_k``.  Only the small
  replica is scanned.  Fetching beats re-computing: the stored vectors are exactly those the native
  replica's own search would score, and a fetch of a few hundred rows costs far less than embedding
  them again.
* **Routing**: with a recall target or a latency budget instead of a replica, :mod:`pipeline.search.routing`
  picks the strategy from the measured profile (``search.profile_path``, eval-recall's JSON); without
  one it answers with the native replica and says that no profile was measured.

Results are chunks; ``per_document=True`` keeps each document's best chunk only (the search is then
over-fetched ×4 so that ``top_k`` documents usually remain).

One Milvus search returns at most :data:`~pipeline.milvus.sink.MAX_SEARCH_LIMIT` (16,384) hits per
query: a request whose ``top_k`` × 4 (per document) × the funnel factor exceeds it is refused with a
ValueError before anything is embedded or searched (:func:`check_search_size`), and routing only
picks strategies within it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from pipeline.documents import Hit
from pipeline.milvus.filters import parse_filter
from pipeline.milvus.sink import MAX_SEARCH_LIMIT, MilvusSink
from pipeline.milvus.tenants import check_tenant
from pipeline.search.routing import Choice, Profile, Strategy, route
from pipeline.settings import Settings
from workers.errors import ConfigError
from workers.model.embedding_model import ModelInfo

_PER_DOCUMENT_OVERFETCH = 4
_HIT_FIELDS = ("text", "metadata")


class QueryEmbedder(Protocol):
    """What search needs of the pool (:class:`workers.pool.EmbedderPool` is one)."""

    @property
    def info(self) -> ModelInfo: ...

    async def embed_queries(
        self, queries: list[str], dims: tuple[int, ...], task: str | None = None
    ) -> dict[int, np.ndarray]: ...


@dataclass(frozen=True)
class QueryResult:
    """The hits of one query, and how they were found: ``strategy`` names the search; ``routing`` is
    routing's reason for it when a recall target or latency budget picked it (else None)."""

    query: str
    dim: int
    hits: list[Hit]
    strategy: str = ""
    routing: str | None = None
    rerank_scores: tuple[float, ...] | None = None
    """The reranker's score of each hit, in hit order, when the hits were reranked (else None)."""


def rescore(
    full_queries: np.ndarray,
    shortlists: Sequence[Sequence[str]],
    vectors: Mapping[str, np.ndarray],
    top_k: int,
) -> list[list[tuple[str, float]]]:
    """For each query row, its shortlisted pks re-scored by cosine with the full-dimension vectors
    (both sides unit length, so a dot product), best first, at most ``top_k``; pks without a vector
    (deleted meanwhile) are dropped."""
    ranked: list[list[tuple[str, float]]] = []
    for query, shortlist in zip(full_queries, shortlists, strict=True):
        pks = [pk for pk in dict.fromkeys(shortlist) if pk in vectors]
        if not pks:
            ranked.append([])
            continue
        scores = np.stack([vectors[pk] for pk in pks]) @ query
        order = np.argsort(-scores, kind="stable")[:top_k]
        ranked.append([(pks[i], float(scores[i])) for i in order])
    return ranked


def search_size(top_k: int, funnel_factor: int | None = None, per_document: bool = False) -> int:
    """Hits one Milvus search is asked for per query: ``top_k``, × 4 ``per_document`` (the over-fetch),
    × ``funnel_factor`` (the shortlist of a funnel search)."""
    return top_k * (_PER_DOCUMENT_OVERFETCH if per_document else 1) * (funnel_factor or 1)


def check_search_size(top_k: int, funnel_factor: int | None = None, per_document: bool = False) -> None:
    """ValueError, naming the limit, unless ``top_k`` is at least 1 and :func:`search_size` is within
    Milvus' :data:`MAX_SEARCH_LIMIT`."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    size = search_size(top_k, funnel_factor, per_document)
    if size > MAX_SEARCH_LIMIT:
        terms = [f"top_k {top_k}"]
        terms += [f"{_PER_DOCUMENT_OVERFETCH} (per-document over-fetch)"] if per_document else []
        terms += [f"funnel factor {funnel_factor}"] if funnel_factor else []
        raise ValueError(
            f"{' × '.join(terms)} = {size} hits per query, over Milvus' limit of {MAX_SEARCH_LIMIT} "
            f"per search: lower top_k{' or the funnel factor' if funnel_factor else ''}"
        )


def best_chunk_per_document(hits: Sequence[Hit], top_k: int) -> list[Hit]:
    """The first (best) hit of each document, in order, at most ``top_k``."""
    seen: set[str] = set()
    kept: list[Hit] = []
    for hit in hits:
        if hit.doc_id not in seen and len(kept) < top_k:
            seen.add(hit.doc_id)
            kept.append(hit)
    return kept


class ReplicaSearch:
    """Blocking searches over the replicas of one sink (call from a thread)."""

    def __init__(self, sink: MilvusSink, native_dim: int) -> None:
        self._sink = sink
        self._native = native_dim

    def run(
        self,
        strategy: Strategy,
        vectors: Mapping[int, np.ndarray],
        top_k: int,
        output_fields: Collection[str] = _HIT_FIELDS,
        where: str | None = None,
        tenant: str | None = None,
    ) -> list[list[Hit]]:
        """``top_k`` hits per query; ``vectors`` holds the queries cut to ``strategy.dim`` (and to the
        native dimension for a funnel).  ``where`` (a compiled filter) and ``tenant`` (required with
        tenants) are applied inside Milvus on the searched replica and, for a funnel, again on the
        rescoring fetch from the native replica, so that no hit outside them is returned even if a row
        changed between the two reads."""
        if strategy.funnel_factor is None:
            return self._sink.search(
                strategy.dim, vectors[strategy.dim], top_k, output_fields, where, tenant=tenant
            )
        limit = top_k * strategy.funnel_factor
        shortlists = self._sink.search(strategy.dim, vectors[strategy.dim], limit, (), where, tenant=tenant)
        pks = {hit.pk for hits in shortlists for hit in hits}
        rows = self._sink.fetch(self._native, pks, output_fields, where, tenant=tenant) if pks else {}
        full = {pk: row["embedding"] for pk, row in rows.items()}
        ranked = rescore(vectors[self._native], [[h.pk for h in hits] for hits in shortlists], full, top_k)
        return [
            [
                Hit(
                    pk=pk,
                    doc_id=rows[pk]["doc_id"],
                    chunk_index=int(rows[pk]["chunk_index"]),
                    text=rows[pk].get("text"),
                    metadata=rows[pk].get("metadata"),
                    score=score,
                )
                for pk, score in hits
            ]
            for hits in ranked
        ]


def pick_strategy(
    settings: Settings,
    dims: Sequence[int],
    *,
    dim: int | None = None,
    funnel_factor: int | None = None,
    recall_target: float | None = None,
    latency_budget_ms: float | None = None,
    profile: Profile | None = None,
    top_k: int | None = None,
    per_document: bool = False,
) -> Choice:
    """An explicit replica (``dim``, funnel from it with ``funnel_factor``) wins; else routing by the
    recall target / latency budget over ``profile`` (default: :func:`load_profile`; without a measured
    profile, the native replica and a reason saying so); else the native replica.  The Choice's
    reason says which.  ConfigError for a replica that does not exist.  With ``top_k``, routing
    leaves out the strategies :func:`check_search_size` refuses, and the pick is checked with it."""
    native = max(dims)
    if dim is not None or funnel_factor is not None:
        choice = Choice(Strategy(dim or min(dims), funnel_factor), None, "the replica asked for")
    elif _routed(dim, funnel_factor, recall_target, latency_budget_ms):
        if profile is None:
            profile = load_profile(settings, dims)
        if profile is not None and top_k is not None:
            profile = _within_limit(profile, top_k, per_document)
        choice = route(profile, native, recall_target=recall_target, latency_budget_ms=latency_budget_ms)
    else:
        choice = Choice(Strategy(native), None, "no replica or target given: the native replica (exact)")
    strategy = choice.strategy
    if strategy.dim not in dims:
        raise ConfigError(f"no replica of dimension {strategy.dim}; the replicas are {list(dims)}")
    if strategy.funnel_factor is not None and strategy.funnel_factor < 1:
        raise ConfigError(f"funnel factor must be at least 1, got {strategy.funnel_factor}")
    if top_k is not None:
        check_search_size(top_k, strategy.funnel_factor, per_document)
    return choice


def _within_limit(profile: Profile, top_k: int, per_document: bool) -> Profile:
    """``profile`` without the strategies that would ask Milvus for more than its limit (all of it
    when none is left: the pick is then refused, naming the limit)."""
    fits = {
        strategy: measured
        for strategy, measured in profile.entries.items()
        if search_size(top_k, strategy.funnel_factor, per_document) <= MAX_SEARCH_LIMIT
    }
    if not fits or len(fits) == len(profile.entries):
        return profile
    note = f"; funnels over Milvus' limit of {MAX_SEARCH_LIMIT} hits for top_k {top_k} left out"
    return Profile(fits, profile.source + note)


def _routed(
    dim: int | None, funnel_factor: int | None, recall_target: float | None, latency_budget_ms: float | None
) -> bool:
    """Whether routing picks the strategy: a target or budget given, and no replica named."""
    return dim is None and funnel_factor is None and (recall_target, latency_budget_ms) != (None, None)


def load_profile(settings: Settings, dims: Sequence[int]) -> Profile | None:
    """The measured profile at ``search.profile_path``; None when it is unset (there is no default)."""
    path = settings.search.profile_path
    return Profile.load(path, dims) if path is not None else None


async def search(
    settings: Settings,
    pool: QueryEmbedder,
    sink: MilvusSink,
    queries: Sequence[str],
    dim: int | None = None,
    top_k: int = 5,
    instruction: str | None = None,
    *,
    funnel_factor: int | None = None,
    recall_target: float | None = None,
    latency_budget_ms: float | None = None,
    profile: Profile | None = None,
    per_document: bool = False,
    where: object = None,
    tenant: str | None = None,
) -> list[QueryResult]:
    """Embed ``queries`` as queries (task ``instruction``, else the collection's default task) and return
    the ``top_k`` hits of each in ``sink``'s replicas by the strategy :func:`pick_strategy` picks,
    among the chunks matching filter ``where`` (:mod:`pipeline.milvus.filters`, parsed JSON; None:
    all) and, with tenants, belonging to ``tenant`` (:mod:`pipeline.milvus.tenants`).  Served latencies
    are folded into ``profile`` when one is given.  ValueError (FilterError for a bad filter,
    TenantRequired for a missing tenant) / ConfigError for a request that cannot be served (e.g. over
    Milvus' limit), before anything is embedded or searched."""
    expr = parse_filter(where)
    tenant = check_tenant(settings.milvus.tenant_field, tenant)
    dims = sink.dims
    choice = pick_strategy(
        settings,
        dims,
        dim=dim,
        funnel_factor=funnel_factor,
        recall_target=recall_target,
        latency_budget_ms=latency_budget_ms,
        profile=profile,
        top_k=top_k,
        per_document=per_document,
    )
    strategy = choice.strategy
    wanted = {strategy.dim} | ({max(dims)} if strategy.funnel_factor else set())
    task = instruction or settings.search.task_for(settings.milvus.collection_prefix)
    vectors = await pool.embed_queries(list(queries), tuple(sorted(wanted, reverse=True)), task)
    limit = search_size(top_k, per_document=per_document)
    started = time.perf_counter()
    hits = await asyncio.to_thread(
        ReplicaSearch(sink, max(dims)).run, strategy, vectors, limit, _HIT_FIELDS, expr, tenant
    )
    if profile is not None:
        profile.observe(strategy, (time.perf_counter() - started) * 1000 / max(1, len(queries)))
    if per_document:
        hits = [best_chunk_per_document(h, top_k) for h in hits]
    routing = choice.reason if _routed(dim, funnel_factor, recall_target, latency_budget_ms) else None
    return [
        QueryResult(q, strategy.dim, h, strategy.name, routing) for q, h in zip(queries, hits, strict=True)
    ]


def format_results(results: Sequence[QueryResult], snippet_chars: int = 120) -> str:
    """Human-readable hits: score, document id, chunk and a one-line snippet."""
    lines: list[str] = []
    for result in results:
        lines.append(f'query: "{result.query}"  ({result.strategy or f"replica {result.dim}d"})')
        if result.routing:
            lines.append(f"  routing: {result.routing}")
        if not result.hits:
            lines.append("  no hits")
        for rank, hit in enumerate(result.hits, 1):
            snippet = " ".join((hit.text or "").split())
            if len(snippet) > snippet_chars:
                snippet = snippet[: snippet_chars - 1] + "…"
            # Reranked: the rerank score first (the order), then the vector score it replaced.
            scores = f"{hit.score:.3f}"
            if result.rerank_scores is not None:
                scores = f"rerank {result.rerank_scores[rank - 1]:.3f}  vector {hit.score:.3f}"
            lines.append(f"  {rank}. {scores}  {hit.doc_id}#{hit.chunk_index}  {snippet}")
    return "\n".join(lines)
