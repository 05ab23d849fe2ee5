"""`python -m pipeline eval-recall`: what each replica, and funnel mode, costs in recall and latency.

On a real corpus (Debian manual pages, or any folder of text files) and a query set, it

1. chunks every document with the consumer's chunker, embeds the chunks on the embedder pool (the ingestion
   path, every replica at once) and writes them into fresh replica collections ``{prefix}_{dim}`` with
   the consumer's sink (the Kafka hop is left out: it changes no vector); only collections it created
   itself are ever dropped (:mod:`pipeline.tools.eval_collections`);
2. embeds the queries on the same pool (the query path: query lane, query formatting);
3. computes the **exact** full-dimension top-k of each query by brute force (numpy, every chunk);
4. runs each strategy — every replica directly, and funnel from each smaller replica with each factor —
   one query per call, and reports recall@k against the exact top-k and the p50/p95 latency per query;
5. writes ``recall.json`` (the routing profile, see :mod:`pipeline.search.routing`), ``recall.md`` (the table)
   and ``recall.png`` (recall against latency) into the output folder.
"""

from __future__ import annotations

import asyncio
import json
import logging
import platform
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.documents import ChunkRow, UpsertDocument
from pipeline.ingest.chunking import Chunker
from pipeline.milvus.sink import MilvusSink
from pipeline.runtime.assemble import DEFAULT_CHUNK_TOKENS
from pipeline.runtime.embedders import EmbedderBackend
from pipeline.search.replicas import ReplicaSearch
from pipeline.search.rerank import Reranker
from pipeline.search.routing import Strategy
from pipeline.settings import Settings
from pipeline.tools.eval_collections import claim_prefix, rebuild_replicas
from pipeline.tools.eval_corpus import Document, man_pages, text_files
from pipeline.tools.eval_rerank import measure_rerank, rerank_line
from workers.model.tokenizer import load_text_tokenizer

log = logging.getLogger(__name__)

SAMPLE_QUERIES = Path(__file__).with_name("sample_queries.txt")
_EMBED_BATCH = 128  # chunks per embed call
_EMBED_CONCURRENCY = 4  # embed calls in flight (the actors batch them together)
_WRITE_BATCH = 64  # documents per sink write


@dataclass(frozen=True)
class EvalOptions:
    """What to measure; see ``python -m pipeline eval-recall --help``."""

    out_dir: Path
    man_dir: Path | None = None
    sections: str = "158"
    lang: str | None = None
    exclude: tuple[str, ...] = ()
    max_docs: int | None = 1000
    text_dir: Path | None = None
    queries_file: Path | None = SAMPLE_QUERIES
    title_queries: int = 50
    factors: tuple[int, ...] = (10, 20, 50)
    top_k: int = 10
    collection_prefix: str = "recall"
    seed: int = 0
    reuse_index: bool = False
    """Measure on the collections a previous run of the same corpus left (no re-embedding)."""
    rerank: int = 50
    """Candidates per query the reranker scores, when one is configured (its added latency is reported)."""


@dataclass
class EvalReport:
    """What was measured, on what; ``rows`` are what routing reads."""

    corpus: str
    documents: int
    chunks: int
    queries: int
    model: str
    index_type: str
    top_k: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)


def load_corpus(options: EvalOptions) -> tuple[str, list[Document]]:
    """The documents to index and a one-line description of them."""
    if options.text_dir is not None:
        return f"text files under {options.text_dir}", text_files(options.text_dir, options.max_docs)
    root = options.man_dir or Path("/usr/share/man")
    pages = man_pages(root, options.sections, None, options.seed, options.lang)
    pages = [p for p in pages if not any(fnmatch(Path(p.doc_id).name, pat) for pat in options.exclude)]
    pages = pages[: options.max_docs]
    where = f"{root}/{options.lang}" if options.lang else str(root)
    excluded = f", excluding {', '.join(options.exclude)}" if options.exclude else ""
    return f"manual pages of sections {options.sections} under {where}{excluded}", pages


def load_queries(options: EvalOptions, documents: Sequence[Document]) -> list[str]:
    """The query file's lines (blank lines and '#' comments skipped) plus the title lines of a seeded
    sample of ``title_queries`` documents, their "name - " prefix cut (a user asks what it does)."""
    queries: list[str] = []
    if options.queries_file is not None:
        lines = options.queries_file.read_text(encoding="utf-8").splitlines()
        queries += [q.strip() for q in lines if q.strip() and not q.startswith("#")]
    sample = random.Random(options.seed).sample(list(documents), min(options.title_queries, len(documents)))
    queries += [d.title.split(" - ", 1)[-1] for d in sample]
    return queries


def exact_top_k(full: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Row indices of the ``k`` best rows of ``full`` for each query (cosine; both sides unit length)."""
    scores = queries @ full.T
    top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
    order = np.take_along_axis(scores, top, axis=1).argsort(axis=1)[:, ::-1]
    return np.take_along_axis(top, order, axis=1)


async def _index(
    settings: Settings, pool: EmbedderBackend, dims: tuple[int, ...], documents: Sequence[Document]
) -> tuple[list[str], np.ndarray]:
    """Chunk, embed and write ``documents``; returns every chunk's pk and full-dimension vector."""
    tokenizer = await asyncio.to_thread(load_text_tokenizer, settings.model)
    room = pool.info.max_length - tokenizer.num_special_tokens
    chunker = Chunker(tokenizer, settings.chunking.max_tokens or min(room, DEFAULT_CHUNK_TOKENS))
    chunked = [(doc, [c.text for c in await asyncio.to_thread(chunker.split, doc.text)]) for doc in documents]
    texts = [text for _, chunks in chunked for text in chunks]
    log.info("%d documents -> %d chunks; embedding them on %d actors", len(documents), len(texts), pool.size)
    limit = asyncio.Semaphore(_EMBED_CONCURRENCY)

    async def embed(start: int) -> dict[int, np.ndarray]:
        async with limit:
            return await pool.embed(texts[start : start + _EMBED_BATCH], dims, settings.model.adapter)

    started = time.monotonic()
    parts = await asyncio.gather(*(embed(s) for s in range(0, len(texts), _EMBED_BATCH)))
    vectors = {dim: np.concatenate([p[dim] for p in parts]) for dim in dims}
    log.info("embedded %d chunks in %.0fs", len(texts), time.monotonic() - started)
    sink = MilvusSink(settings.milvus, dims)
    try:
        await asyncio.to_thread(sink.ensure_collections)
        writes, row, pks = [], 0, []
        for doc, chunks in chunked:
            rows = [ChunkRow(doc.doc_id, i, text, {"title": doc.title}) for i, text in enumerate(chunks)]
            span = slice(row, row + len(chunks))
            writes.append(UpsertDocument(doc.doc_id, rows, {dim: vectors[dim][span] for dim in dims}))
            pks += [f"{doc.doc_id}#{i}" for i in range(len(chunks))]
            row += len(chunks)
        for start in range(0, len(writes), _WRITE_BATCH):
            result = await asyncio.to_thread(sink.write, writes[start : start + _WRITE_BATCH])
            if result.rejected:
                raise RuntimeError(f"Milvus rejected documents: {dict(result.rejected)}")
        await asyncio.to_thread(sink.flush)
    finally:
        sink.close()
    return pks, vectors[max(dims)]


def _read_index(settings: Settings, dims: tuple[int, ...]) -> tuple[list[str], np.ndarray]:
    """Every chunk's pk and full-dimension vector, as a previous run stored them."""
    sink = MilvusSink(settings.milvus, dims)
    try:
        rows = sink.fetch_all(max(dims))
    finally:
        sink.close()
    if not rows:
        raise FileNotFoundError(f"no rows in {settings.milvus.collection_prefix}_{max(dims)}: index first")
    return [r["pk"] for r in rows], np.array([r["embedding"] for r in rows], dtype=np.float32)


def _measure(
    searcher: ReplicaSearch,
    strategy: Strategy,
    queries: dict[int, np.ndarray],
    exact: list[set[str]],
    top_k: int,
) -> dict[str, Any]:
    """One query per call (a served search's latency), recall@k against ``exact``."""
    recalls, latencies = [], []
    for i, truth in enumerate(exact):
        one = {dim: vectors[i : i + 1] for dim, vectors in queries.items()}
        started = time.perf_counter()
        [hits] = searcher.run(strategy, one, top_k, output_fields=())
        latencies.append((time.perf_counter() - started) * 1000)
        recalls.append(len({h.pk for h in hits} & truth) / len(truth))
    return {
        "strategy": strategy.name,
        "dim": strategy.dim,
        "funnel_factor": strategy.funnel_factor,
        "scanned_dim": strategy.dim,
        "recall": round(float(np.mean(recalls)), 4),
        "recall_min": round(float(np.min(recalls)), 4),
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p95_ms": round(float(np.percentile(latencies, 95)), 2),
    }


async def run_eval(
    settings: Settings,
    pool: EmbedderBackend,
    dims: tuple[int, ...],
    options: EvalOptions,
    reranker: Reranker | None = None,
) -> EvalReport:
    """Index the corpus into replicas ``dims`` (resolved by the caller against ``pool``'s model),
    measure every strategy, write the JSON, table and plot; returns the report.

    ``settings.milvus.collection_prefix`` is replaced by ``options.collection_prefix``, whose
    collections are dropped and rebuilt (or, with ``reuse_index``, read).  Before anything else it
    refuses (ConfigError) a prefix that is not eval-recall's own
    (:func:`pipeline.tools.eval_collections.claim_prefix`): it never drops what it did not create.
    Its collections have no tenants (its corpus has none), whatever ``milvus.tenant_field`` says.
    With ``reranker``, the latency it adds over ``options.rerank`` candidates is measured too.
    """
    production_prefix = settings.milvus.collection_prefix
    scratch = {"collection_prefix": options.collection_prefix, "tenant_field": None}
    settings = settings.model_copy(update={"milvus": settings.milvus.model_copy(update=scratch)})
    await asyncio.to_thread(claim_prefix, settings.milvus, production_prefix)
    corpus, documents = await asyncio.to_thread(load_corpus, options)
    queries = load_queries(options, documents)
    if options.reuse_index:
        pks, full = await asyncio.to_thread(_read_index, settings, dims)
    else:
        await asyncio.to_thread(rebuild_replicas, settings.milvus, dims, production_prefix)
        pks, full = await _index(settings, pool, dims, documents)
    task = settings.search.task_for(options.collection_prefix)
    query_vectors = await pool.embed_queries(queries, dims, task, settings.model.adapter)
    top_k = min(options.top_k, len(pks))
    exact = [{pks[i] for i in row} for row in exact_top_k(full, query_vectors[max(dims)], top_k)]
    strategies = [Strategy(dim) for dim in dims] + [
        Strategy(dim, factor) for dim in sorted(dims) if dim != max(dims) for factor in options.factors
    ]
    sink = MilvusSink(settings.milvus, dims)
    searcher = ReplicaSearch(sink, max(dims))
    try:
        rows = [
            await asyncio.to_thread(_measure, searcher, s, dict(query_vectors), exact, top_k)
            for s in strategies
        ]
        rerank = None
        if reranker is not None:
            name = settings.reranker.name_or_path if settings.reranker else "reranker"
            vectors = dict(query_vectors)
            rerank = await measure_rerank(
                reranker, searcher, max(dims), queries, vectors, options.rerank, name
            )
    finally:
        sink.close()
    report = EvalReport(
        corpus=corpus,
        documents=len(documents),
        chunks=len(pks),
        queries=len(queries),
        model=pool.info.name,
        index_type=settings.milvus.index_type,
        top_k=top_k,
        rows=rows,
        meta={
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {platform.system()}, {pool.size} embedder actor(s) on "
            f"{pool.info.device}",
            "milvus_uri": settings.milvus.uri,
            "dims": list(dims),
            "query_task": task,
        },
    )
    if rerank is not None:
        report.meta["rerank"] = rerank
    write_report(report, options.out_dir)
    return report


def render_table(report: EvalReport) -> str:
    """The Markdown table of ``report``."""
    k = report.top_k
    lines = [
        f"recall@{k} against exact {report.meta.get('dims', [0])[0]}-d search (brute force), "
        f"{report.queries} queries, {report.documents} documents / {report.chunks} chunks "
        f"({report.corpus}); model {report.model}; Milvus index {report.index_type}; "
        f"{report.meta.get('date')}",
        "",
        f"| strategy | replica scanned | recall@{k} | worst query | p50 ms | p95 ms |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['strategy']} | {r['scanned_dim']}d | {r['recall']:.3f} | {r['recall_min']:.2f} "
        f"| {r['p50_ms']:.1f} | {r['p95_ms']:.1f} |"
        for r in report.rows
    ]
    return "\n".join(lines + rerank_line(report.meta)) + "\n"


def write_report(report: EvalReport, out_dir: Path) -> None:
    """``recall.json``, ``recall.md`` and ``recall.png`` in ``out_dir``."""
    from pipeline.tools.eval_plot import plot_recall

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "recall.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    (out_dir / "recall.md").write_text(render_table(report))
    plot_recall(
        report.rows, report.top_k, out_dir / "recall.png", title=f"{report.model}, {report.chunks} chunks"
    )
