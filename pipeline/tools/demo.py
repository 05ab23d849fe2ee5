"""`demo`: the whole flow on the local stack with the bundled corpus and the packaged MiniLM model."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pipeline.ingest.consumer import ConsumerStats
from pipeline.ingest.produce import produce
from pipeline.ops import stack
from pipeline.runtime.assemble import build_runtime
from pipeline.runtime.run_summary import BUSY
from pipeline.runtime.versions import serving_settings
from pipeline.search.replicas import format_results, search
from pipeline.settings import Settings

SAMPLE_CORPUS = Path(__file__).parent / "sample_corpus"
DEMO_DIMS = (256, 128)
DEMO_QUERIES = (
    "how do I keep a starter alive for baking bread?",
    "why does the ocean rise and fall twice a day",
    "what happens to a Kafka partition when a consumer leaves the group",
    "treating a kitchen burn",
)


def demo_settings(settings: Settings) -> Settings:
    """The user's settings on the local stack, with the demo's replicas (native, 256, 128)
    unless dims were configured."""
    settings = stack.on_local_stack(settings)
    if settings.replicas.dims:
        return settings
    return settings.model_copy(update={"replicas": settings.replicas.model_copy(update={"dims": DEMO_DIMS})})


def _rates(stats: ConsumerStats) -> str:
    """The consumer's rates over the time it measured, saying what that time spans (none if none)."""
    busy = stats.busy_seconds()
    if busy <= 0:
        return "no busy time measured (nothing was consumed)"
    return (
        f"{stats.events_per_second():.1f} events/s, {stats.tokens_embedded / busy:,.0f} tokens/s "
        f"over {busy:.1f} s busy ({BUSY})"
    )


async def run_demo(settings: Settings, idle_s: float = 3.0) -> int:
    """Bring the stack up, ingest the sample corpus, search it; returns a process exit code."""
    settings = demo_settings(settings)
    print("== starting the local stack (Kafka broker, Milvus Lite server, Ray head)")
    for service in await asyncio.to_thread(stack.up, settings):
        print(f"   {service}")
    print(f"== producing the sample corpus from {SAMPLE_CORPUS}")
    await produce(settings.kafka, [SAMPLE_CORPUS])
    print("== starting the embedder pool and ingesting")
    base, settings = settings, await serving_settings(settings)  # the version `versions switch` serves
    runtime = await build_runtime(settings, base=base)
    try:
        stats = await runtime.new_consumer().run(until_idle_s=idle_s)
        print(
            f"   {stats.events} events -> {stats.documents_written} documents, {stats.chunks_written} chunks "
            f"in {len(runtime.dims)} replicas {list(runtime.dims)}; {stats.dead_letters} dead-lettered"
        )
        print(f"   {_rates(stats)}")
        for dim in runtime.dims:
            results = await search(settings, runtime.pool, runtime.sink, DEMO_QUERIES, dim=dim, top_k=3)
            print(f"== search on the {dim}-dimension replica")
            print(format_results(results))
    finally:
        runtime.close()
    print(f"== {stack.dashboard_login(settings)}")
    print(
        "   the stack keeps running: `python -m pipeline status` shows it, `python -m pipeline down` stops it"
    )
    return 0
