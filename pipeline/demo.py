"""`demo`: the whole flow on the local stack with the bundled corpus and the packaged MiniLM model."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pipeline import stack
from pipeline.config import Settings
from pipeline.produce import produce
from pipeline.runtime import build_runtime
from pipeline.search import format_results, search

SAMPLE_CORPUS = Path(__file__).parent / "sample_corpus"
DEMO_DIMS = (256, 128)
DEMO_QUERIES = (
    "how do I keep a starter alive for baking bread?",
    "why does the ocean rise and fall twice a day",
    "what happens to a Kafka partition when a consumer leaves the group",
    "treating a kitchen burn",
)


def demo_settings(settings: Settings) -> Settings:
    """The user's settings pointed at the local stack's ports, with the demo's replicas
    (native, 256, 128) unless dims were configured."""
    local = settings.stack
    update: dict[str, object] = {
        "kafka": settings.kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{local.kafka_port}"}),
        "milvus": settings.milvus.model_copy(update={"uri": f"http://127.0.0.1:{local.milvus_port}"}),
    }
    if not settings.embedding.dims:
        update["embedding"] = settings.embedding.model_copy(update={"dims": DEMO_DIMS})
    return settings.model_copy(update=update)


async def run_demo(settings: Settings, idle_s: float = 3.0) -> int:
    """Bring the stack up, ingest the sample corpus, search it; returns a process exit code."""
    settings = demo_settings(settings)
    print("== starting the local stack (Kafka broker, Milvus Lite server, Ray head)")
    for service in await asyncio.to_thread(stack.up, settings):
        print(f"   {service}")
    print(f"== producing the sample corpus from {SAMPLE_CORPUS}")
    await produce(settings.kafka, [SAMPLE_CORPUS])
    print("== starting the embedder pool and ingesting")
    runtime = await build_runtime(settings)
    try:
        stats = await runtime.new_worker().run(until_idle_s=idle_s)
        print(
            f"   {stats.events} events -> {stats.documents_written} documents, {stats.chunks_written} chunks "
            f"in {len(runtime.dims)} replicas {list(runtime.dims)}; {stats.dead_letters} dead-lettered; "
            f"{stats.events_per_second():.1f} events/s, "
            f"{stats.tokens_embedded / max(stats.busy_seconds(), 1e-9):,.0f} tokens/s"
        )
        for dim in runtime.dims:
            results = await search(settings, runtime.pool, DEMO_QUERIES, dim=dim, top_k=3)
            print(f"== search on the {dim}-dimension replica")
            print(format_results(results))
    finally:
        runtime.close()
    print(f"== Ray dashboard: http://127.0.0.1:{settings.stack.dashboard_port}")
    print(
        "   the stack keeps running: `python -m pipeline status` shows it, `python -m pipeline down` stops it"
    )
    return 0
