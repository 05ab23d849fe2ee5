"""`python -m pipeline bench --end-to-end`: the whole pipeline against the bare embedder, in one run.

Both phases run on the same embedder pool (the same actors, the same warmed-up model) and on the same
chunks, so their tokens/s compare the pipeline around the embedder with the embedder alone:

* ``embedder``: the chunks' texts sent straight to the pool from this process, in requests of the
  consumer's size with as many tokens in flight as the consumer allows; no Kafka, no Milvus;
* ``embedder_from_ids`` (when the consumer sends token ids, ``consumer.send_token_ids``): the same,
  each text sent with the chunker's ids, as the consumer sends them: the actors do not tokenize.
  Each bare phase runs two rounds (the two alternating) and reports its faster round
  (``rounds_seconds`` holds all): the bare figures are the best the actors did, so the pipeline's
  share of them is not flattered;
* ``pipeline``: the documents, produced beforehand to a fresh topic, ingested by an
  :class:`~pipeline.ingest.consumer.IngestConsumer`: poll, parse, chunk, embed, upsert into every replica,
  commit.  Its time runs from the first record polled to the last unit acknowledged.

The documents are random words that the model's tokenizer reads as one token each (lognormal lengths:
the workload of ``bench``), or with ``--real-text FILE`` the documents of a real-text corpus
(:mod:`pipeline.tools.bench_documents`).  Afterwards every replica must hold one row per chunk; the
result says whether it does, and where the pipeline phase spent its time
(:mod:`pipeline.tools.bench_breakdown`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import subprocess
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.milvus.connection import MilvusConnection
from pipeline.milvus.metrics import replica_write_seconds
from pipeline.ops import stack
from pipeline.runtime.assemble import Runtime, build_runtime
from pipeline.runtime.run_summary import GroupStats
from pipeline.settings import Settings, load_settings
from pipeline.tools.bench_bare import (
    Requests,
    bare_inflight_tokens,
    embed_requests,
    time_embedder,
    time_embedder_round,
)
from pipeline.tools.bench_breakdown import actor_counters, breakdown, difference, render
from pipeline.tools.bench_documents import bench_texts, produce_documents
from pipeline.tools.bench_members import consume, sized_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline bench --end-to-end", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--end-to-end", action="store_true", required=True)
    parser.add_argument("--docs", type=int, default=4096, help="documents in the workload")
    parser.add_argument(
        "--real-text",
        type=Path,
        metavar="FILE",
        help="JSONL corpus (bench --real-text's) to send, round and round, instead of random words",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-words", type=int, default=2048, help="longest document, in words")
    parser.add_argument("--warmup-docs", type=int, default=256, help="sent to the pool before timing")
    parser.add_argument("--min-seconds", type=float, default=60.0, help="the pipeline must be busy this long")
    parser.add_argument("--actors", type=int, metavar="N", help="embedder actors (default pool.num_actors)")
    parser.add_argument(
        "--consumer-actors",
        type=int,
        metavar="M",
        help="consume with M consumer-group members as Ray actors, as `run --consumer-actors M` does "
        "(default scaling.consumer_actors; 0: one consumer in this process)",
    )
    parser.add_argument(
        "--partitions", type=int, metavar="P", help="topic partitions (default: kafka.partitions, >= M)"
    )
    parser.add_argument(
        "--external", action="store_true", help="use the configured services instead of the local stack"
    )
    parser.add_argument("--keep", action="store_true", help="keep the bench topic's collections")
    parser.add_argument("--out", type=Path, default=Path("tests/perf/results/pipeline.json"))
    return parser


def _requests(runtime: Runtime, texts: Sequence[str], with_ids: bool = False) -> tuple[Requests, int]:
    limit = runtime.settings.consumer.max_request_tokens
    chunker, model = runtime.chunker, runtime.settings.model
    return embed_requests(chunker, model, runtime.special_tokens, limit, texts, with_ids)


def gpu_name() -> str | None:
    """The first GPU's name as nvidia-smi reports it, or None without one."""
    try:
        names = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return None
    return names[0].strip() or None


def _drop_collections(runtime: Runtime) -> None:
    milvus = MilvusConnection(runtime.settings.milvus)
    try:
        for dim in runtime.dims:
            name = runtime.sink.collection_name(dim)
            milvus.call(f"dropping {name}", "drop_collection", name)
    finally:
        milvus.close()


def _own_replicas(runtime: Runtime, seconds: dict[str, float]) -> dict[str, float]:
    """``seconds`` of this run's replicas only: the process' counters also hold other collections'."""
    names = {runtime.sink.collection_name(dim) for dim in runtime.dims}
    return {name: s for name, s in seconds.items() if name in names}


def bench_settings(settings: Settings, run_id: str) -> Settings:
    """``settings`` with a fresh topic, consumer group and collection prefix for run ``run_id``."""
    kafka = settings.kafka.model_copy(update={"topic": f"bench-{run_id}", "group_id": f"bench-{run_id}"})
    milvus = settings.milvus.model_copy(update={"collection_prefix": f"bench_{run_id}_"})
    pool = settings.pool.model_copy(update={"detached": False})  # a benchmark leaves nothing running
    return settings.model_copy(update={"kafka": kafka, "milvus": milvus, "pool": pool})


async def run_pipeline_bench(
    settings: Settings,
    docs: int,
    *,
    seed: int = 0,
    max_words: int = 2048,
    warmup_docs: int = 256,
    min_seconds: float = 60.0,
    keep: bool = False,
    one_host: bool = True,
    real_text: Path | None = None,
) -> dict[str, Any]:
    """Run both phases on the services ``settings`` name; returns the JSON-ready result.

    With ``scaling.consumer_actors`` M > 0 the pipeline phase runs M consumer actors (``run
    --consumer-actors M``); the pool fed directly gets as many tokens in flight as the pipeline's
    consumers together, and at least ``consumer.largest_inflight_tokens()`` per embedder actor, but no more
    than the actors hold (:func:`bare_inflight_tokens`)."""
    settings = bench_settings(settings, uuid.uuid4().hex[:8])
    texts, warmup = await bench_texts(
        settings, docs, warmup_docs, seed=seed, max_words=max_words, real_text=real_text
    )
    runtime = await build_runtime(settings)
    try:
        produce_started = time.perf_counter()
        await produce_documents(settings, texts)
        produce_seconds = time.perf_counter() - produce_started
        warm_requests, _ = _requests(runtime, warmup)
        members = settings.scaling.consumer_actors
        budget = bare_inflight_tokens(settings, members, runtime.pool.size)
        warmup_seconds = await time_embedder(runtime.pool, runtime.dims, budget, warm_requests)
        requests, chunks = _requests(runtime, texts)
        tokens = sum(size for _, size in requests)
        embedder_rounds: list[tuple[float, dict[str, float]]] = []
        from_ids_rounds: list[tuple[float, dict[str, float]]] = []
        id_requests = _requests(runtime, texts, with_ids=True)[0] if runtime.chunker.keeps_token_ids else None
        # Two rounds of the bare phase, alternating with the ids phase when there is one: the pipeline
        # is compared with the faster, and a difference that is only the order they ran in (a warmer
        # cache, a later clock) shows as rounds that disagree.
        for _ in range(2):
            embedder_rounds.append(await time_embedder_round(runtime.pool, runtime.dims, budget, requests))
            if id_requests is not None:
                from_ids_rounds.append(
                    await time_embedder_round(runtime.pool, runtime.dims, budget, id_requests)
                )
        embedder_seconds = min(seconds for seconds, _ in embedder_rounds)
        from_ids_seconds = min(seconds for seconds, _ in from_ids_rounds) if from_ids_rounds else None
        actors_before, replicas_before = await actor_counters(runtime.pool), replica_write_seconds()
        stats, busy = await consume(runtime, members, one_host)
        where = breakdown(
            busy,
            stats.stage_seconds,
            None if members else _own_replicas(runtime, difference(replica_write_seconds(), replicas_before)),
            difference(await actor_counters(runtime.pool), actors_before),
            runtime.pool.size,
            stats.cpu_seconds,
        )
        rows = {dim: runtime.sink.count(dim) for dim in runtime.dims}
        if not keep:
            _drop_collections(runtime)
    finally:
        runtime.close()
    embedder_rate = tokens / embedder_seconds
    pipeline_rate = stats.tokens_embedded / busy if busy > 0 else 0.0
    return {
        "device": gpu_name() or runtime.pool.info.device,
        "model": {
            "name": runtime.pool.info.name,
            "dtype": runtime.pool.info.dtype,
            "device": runtime.pool.info.device,
            "compiled": settings.model.compile,
            "packing": settings.model.packing,
        },
        "pool_actors": runtime.pool.size,
        "replicas": list(runtime.dims),
        "partitions": settings.kafka.partitions,
        "consumer_actors": members,
        "embedder_inflight_tokens": budget,
        "max_batch_tokens": settings.batching.max_batch_tokens,
        "max_inflight_tokens": settings.consumer.max_inflight_tokens,  # None: adaptive
        "inflight_seconds": settings.consumer.inflight_seconds,
        "largest_inflight_budget": stats.largest_inflight_budget,
        "max_unit_bytes": settings.consumer.unit_bytes(stats.largest_inflight_budget),
        "send_token_ids": runtime.chunker.keeps_token_ids,
        "workload": f"real text: {real_text}, round and round" if real_text else "random one-token words",
        "docs": docs,
        "chunks": chunks,
        "tokens": tokens,
        "produce_seconds": produce_seconds,
        "warmup_seconds": warmup_seconds,
        "embedder": {
            "seconds": embedder_seconds,
            "rounds_seconds": [seconds for seconds, _ in embedder_rounds],
            "rounds_actors": [counters for _, counters in embedder_rounds],
            "tokens_per_s": embedder_rate,
            "docs_per_s": docs / embedder_seconds,
        },
        "embedder_from_ids": None
        if from_ids_seconds is None
        else {
            "seconds": from_ids_seconds,
            "rounds_seconds": [seconds for seconds, _ in from_ids_rounds],
            "rounds_actors": [counters for _, counters in from_ids_rounds],
            "tokens_per_s": tokens / from_ids_seconds,
            "docs_per_s": docs / from_ids_seconds,
        },
        "pipeline": {
            "seconds": busy,
            "tokens_per_s": pipeline_rate,
            "events_per_s": stats.events / busy if busy > 0 else 0.0,
            "events": stats.events,
            "tokens_embedded": stats.tokens_embedded,
            "chunks_written": stats.chunks_written,
            "dead_letters": stats.dead_letters,
            "members": [
                {"events": m.events, "tokens_embedded": m.tokens_embedded, "busy_seconds": m.busy_seconds()}
                for m in (stats.members if isinstance(stats, GroupStats) else ())
            ],
        },
        "ratio_pipeline_vs_embedder": pipeline_rate / embedder_rate,
        "ratio_pipeline_vs_embedder_from_ids": None
        if from_ids_seconds is None
        else pipeline_rate * from_ids_seconds / tokens,
        "breakdown": where,
        "sustained": busy >= min_seconds,
        "rows_per_replica": {str(dim): n for dim, n in rows.items()},
        "complete": all(n == chunks for n in rows.values()) and stats.tokens_embedded == tokens,
    }


def write_result(
    result: dict[str, Any], argv: Sequence[str], config: Path | None, out: Path
) -> dict[str, Any]:
    """``result`` headed by the command that reproduces it (``bench`` and ``argv``), written to ``out``."""
    prefix = ["--config", str(config)] if config else []
    result = {"command": shlex.join(["python", "-m", "pipeline", *prefix, "bench", *argv]), **result}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


def _from_ids_line(result: dict[str, Any]) -> str:
    from_ids = result["embedder_from_ids"]
    if from_ids is None:
        return ""
    ratio = result["ratio_pipeline_vs_embedder_from_ids"]
    return (
        f"  ... texts sent with their ids {from_ids['tokens_per_s']:>10,.0f} tok/s "
        f"({from_ids['seconds']:.1f} s; the pipeline makes {ratio:.1%} of it)\n"
    )


def main(argv: Sequence[str], config: Path | None = None) -> int:
    """CLI entry: bring up the local stack (unless --external), run, write the JSON, print a summary.

    ``config`` is the TOML settings file (model, pool, batching, replicas...).  Exits 1 when a
    replica misses rows; a short run (under --min-seconds) is reported, not failed.
    """
    args = _parser().parse_args(argv)
    settings = sized_settings(load_settings(config), args.actors, args.consumer_actors, args.partitions)
    if not args.external:
        settings = stack.on_local_stack(settings)
        for service in stack.up(settings):
            print(service)
    result = asyncio.run(
        run_pipeline_bench(
            settings,
            args.docs,
            seed=args.seed,
            max_words=args.max_words,
            warmup_docs=args.warmup_docs,
            min_seconds=args.min_seconds,
            keep=args.keep,
            one_host=not args.external,
            real_text=args.real_text,
        )
    )
    result = write_result(result, argv, config, args.out)
    embedder, pipeline = result["embedder"], result["pipeline"]
    print(
        f"{result['model']['name']} on {result['device']}: {result['docs']} docs, {result['chunks']} chunks, "
        f"{result['tokens']:,} tokens, replicas {result['replicas']}\n"
        f"  embedder alone {embedder['tokens_per_s']:>10,.0f} tok/s ({embedder['seconds']:.1f} s)\n"
        f"{_from_ids_line(result)}"
        f"  whole pipeline {pipeline['tokens_per_s']:>10,.0f} tok/s ({pipeline['seconds']:.1f} s busy, "
        f"{pipeline['events_per_s']:.1f} events/s)\n"
        f"  ratio {result['ratio_pipeline_vs_embedder']:.1%}; every replica complete: {result['complete']}\n"
        f"{render(result['breakdown'])}\n"
        f"written to {args.out}"
    )
    return 0 if result["complete"] else 1
