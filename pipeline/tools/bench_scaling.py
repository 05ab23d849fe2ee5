"""`python -m pipeline bench --scaling 1,2`: the embedder pool's tokens/s with 1, 2, ... actors.

For each actor count the pool is started afresh (``pool.num_actors`` = that count, each actor on its
own GPU(s) as ``pool.gpus_per_actor`` asks), warmed up, and fed the same chunks from this process the
way ``bench --end-to-end`` times its embedder phase: requests of the consumer's size, with
``consumer.largest_inflight_tokens()`` per actor in flight, at most what each actor holds (scaling out adds
consumers as well as GPUs, so each actor keeps the queue depth one actor has;
:func:`~pipeline.tools.bench_bare.bare_inflight_tokens`).  No Kafka, no Milvus: this measures how the pool
scales.

The documents are those of ``bench --end-to-end`` (random one-token words, lognormal lengths), or with
``--real-text FILE`` ``--docs`` documents of that JSONL corpus (``bench --real-text``'s, ``{"id", "lang",
"text"}`` a line; read round and round when it holds fewer) and its last ``--warmup-docs`` for the
warm-up, chunked as the consumer chunks them.  Every request's reply is checked to hold one unit vector
per text for every replica dimension.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.runtime.assemble import make_chunker
from pipeline.runtime.embedders import start_pool
from pipeline.runtime.ray_cluster import connect_ray
from pipeline.settings import Settings, load_settings
from pipeline.tools.bench_bare import bare_inflight_tokens, embed_requests, time_embedder
from pipeline.tools.bench_documents import bench_texts
from pipeline.tools.bench_pipeline import gpu_name, write_result
from workers.model.inputs import ModelInput
from workers.model.tokenizer import load_text_tokenizer
from workers.pool import EmbedderPool

log = logging.getLogger(__name__)


def _counts(value: str) -> list[int]:
    try:
        counts = [int(part) for part in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of actor counts, got {value!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"actor counts must be >= 1, got {value!r}")
    return counts


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline bench --scaling", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--scaling", type=_counts, required=True, metavar="N,M,...", help="actor counts")
    parser.add_argument("--docs", type=int, default=4096, help="documents in the workload")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-words", type=int, default=2048, help="longest document, in words")
    parser.add_argument("--warmup-docs", type=int, default=256, help="sent to each pool before timing")
    parser.add_argument(
        "--real-text", type=Path, metavar="FILE", help="JSONL corpus to embed instead of random words"
    )
    parser.add_argument("--out", type=Path, default=Path("tests/perf/results/scaling.json"))
    return parser


async def _checked_embed(pool: EmbedderPool, dims: tuple[int, ...], texts: list[ModelInput]) -> None:
    vectors = await pool.embed(texts, dims)
    for dim in dims:
        rows = vectors[dim]
        if rows.shape != (len(texts), dim) or not np.allclose(np.linalg.norm(rows, axis=1), 1, atol=1e-3):
            raise RuntimeError(f"the pool answered {len(texts)} texts with {rows.shape} rows at dim {dim}")


async def _time_count(
    settings: Settings, count: int, texts: Sequence[str], warmup: Sequence[str]
) -> dict[str, Any]:
    pool_settings = settings.pool.model_copy(update={"num_actors": count})
    # A namespace per pool: the previous pool's actor names are freed asynchronously after its kill.
    namespace = f"bench-scaling-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    pool, dims = await start_pool(settings.model_copy(update={"pool": pool_settings}), namespace=namespace)
    try:
        start_seconds = time.perf_counter() - started
        tokenizer = await asyncio.to_thread(load_text_tokenizer, settings.model)
        chunker = make_chunker(settings, tokenizer, pool.info)
        limit, special = settings.consumer.max_request_tokens, tokenizer.num_special_tokens
        budget = bare_inflight_tokens(settings, 0, count)
        warm_requests, _ = embed_requests(chunker, settings.model, special, limit, warmup)
        requests, chunks = embed_requests(chunker, settings.model, special, limit, texts)
        # Twice over the warm-up: every actor sees batches of every size before the clock starts.
        for _ in range(2):
            await time_embedder(pool, dims, budget, warm_requests)
        for texts_, _tokens in requests[: min(len(requests), 4 * count)]:
            await _checked_embed(pool, dims, texts_)
        seconds = await time_embedder(pool, dims, budget, requests)
        per_actor = await pool.stats()
        tokens = sum(size for _, size in requests)
        return {
            "actors": pool.size,
            "start_seconds": start_seconds,
            "chunks": chunks,
            "tokens": tokens,
            "seconds": seconds,
            "tokens_per_s": tokens / seconds,
            "max_inflight_tokens": budget,
            "per_actor": per_actor,
            "model": {"name": pool.info.name, "dtype": pool.info.dtype, "device": pool.info.device},
            "replicas": list(dims),
        }
    finally:
        pool.shutdown()


async def run_scaling_bench(
    settings: Settings,
    counts: Sequence[int],
    docs: int,
    *,
    seed: int = 0,
    max_words: int = 2048,
    warmup_docs: int = 256,
    real_text: Path | None = None,
) -> dict[str, Any]:
    """Time the pool at each actor count (the caller has joined Ray); returns the JSON-ready result."""
    # Real text goes round and round the corpus up to ``docs`` documents: work for eight GPUs' timing.
    texts, warmup = await bench_texts(
        settings, docs, warmup_docs, seed=seed, max_words=max_words, real_text=real_text
    )
    runs = []
    for count in counts:
        log.info("timing the pool with %d actor(s)", count)
        runs.append(await _time_count(settings, count, texts, warmup))
    base = runs[0]["tokens_per_s"] / runs[0]["actors"]
    for run in runs:
        run["speedup_vs_first"] = run["tokens_per_s"] / runs[0]["tokens_per_s"]
        run["per_actor_efficiency"] = run["tokens_per_s"] / run["actors"] / base
    return {
        "device": gpu_name() or runs[0]["model"]["device"],
        "compiled": settings.model.compile,
        "gpus_per_actor": settings.pool.gpus_per_actor,
        "max_batch_tokens": settings.batching.max_batch_tokens,
        "workload": f"real text: {real_text}, round and round" if real_text else "random one-token words",
        "docs": docs,
        "runs": runs,
    }


def main(argv: Sequence[str], config: Path | None = None) -> int:
    """CLI entry: join Ray (the configured cluster or a private one), run, write the JSON, print a table."""
    args = _parser().parse_args(argv)
    settings = load_settings(config)
    connect_ray(settings)
    result = asyncio.run(
        run_scaling_bench(
            settings,
            args.scaling,
            args.docs,
            seed=args.seed,
            max_words=args.max_words,
            warmup_docs=args.warmup_docs,
            real_text=args.real_text,
        )
    )
    result = write_result(result, argv, config, args.out)
    print(f"{result['runs'][0]['model']['name']} on {result['device']}, {result['docs']} docs:")
    for run in result["runs"]:
        print(
            f"  {run['actors']} actor(s) {run['tokens_per_s']:>10,.0f} tok/s ({run['seconds']:.1f} s) "
            f"x{run['speedup_vs_first']:.2f} vs first, {run['per_actor_efficiency']:.0%} per actor"
        )
    print(f"written to {args.out}")
    return 0
