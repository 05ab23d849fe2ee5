"""The metrics a run exports through Ray's Prometheus endpoint match what the run did.

A small stream (valid upserts, a delete, three malformed events) is ingested on the real broker,
Milvus Lite and a Ray head; then every node's metrics port is scraped (as Prometheus would)
until Ray has flushed, and each ``ray_ingest_*`` metric is checked against the worker's own
counters, the pool's counters and the stream.  Finally an embedder actor is killed and its
restart is counted.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import ray
from helpers.kafka_io import Record, produce
from helpers.settings import private_settings
from ray.exceptions import RayActorError
from scrape import Sample, scrape_until, series, total

from pipeline.ingest import metrics as ingest_metrics
from pipeline.milvus import metrics as milvus_metrics
from pipeline.ops.status_watch import watch
from pipeline.runtime.assemble import build_runtime
from workers import metrics as worker_metrics

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

VALID = 24
# Each dead letter is counted under the code it was rejected with (a blank text used to be "invalid_field").
CODES = {b"bad-json": "not_json", b"bad-op": "bad_op", b"blank": "blank_text"}
MALFORMED = [
    Record(b"bad-json", b"{not json"),
    Record(b"bad-op", b'{"op": "frobnicate", "id": "bad-op", "text": "x"}'),
    Record(b"blank", b'{"id": "blank", "text": " \\t "}'),
]


def _stream() -> list[Record]:
    records = []
    for i in range(VALID):
        text = f"Document {i} talks about streaming ingestion. " * (1 + i % 7)
        records.append(Record(f"doc-{i}".encode(), json.dumps({"id": f"doc-{i}", "text": text}).encode()))
    records.append(Record(b"doc-0", None))  # a tombstone: one ok delete
    return records + MALFORMED


def _first_problem(
    expected: dict[str, tuple[Callable[[list[Sample]], object], object]],
) -> Callable[[list[Sample]], str | None]:
    def check(samples: list[Sample]) -> str | None:
        for what, (actual, wanted) in expected.items():
            if (got := actual(samples)) != wanted:
                return f"{what}: expected {wanted}, got {got}"
        return None

    return check


async def test_every_metric_is_exported_with_the_values_of_the_run(
    kafka_bootstrap: str, milvus_lite_uri: str, minilm_path: Path, ray_session: None
) -> None:
    settings = private_settings(
        kafka_bootstrap,
        milvus_lite_uri,
        minilm_path,
        name="metrics",
        kafka={"partitions": 2},
        pool={"cpus_per_actor": 1},
        dims=(128,),
        max_tokens=48,
        consumer={"max_batch_events": 8},
        ray_namespace=True,
    )
    runtime = await build_runtime(settings)
    try:
        await produce(settings.kafka, _stream())
        stats = await runtime.new_consumer().run(until_idle_s=2.0)
        pool_stats = await runtime.pool.stats()
        events = VALID + 1 + len(MALFORMED)
        assert stats.events == events and stats.dead_letters == len(MALFORMED)
        tokens = sum(s["tokens"] for s in pool_stats)
        batches = sum(s["batches"] for s in pool_stats)
        assert tokens > 0 and batches > 0

        topic, ns = {"topic": settings.kafka.topic}, {"namespace": settings.ray.namespace}
        replicas = [runtime.sink.collection_name(d) for d in runtime.dims]

        def writes(s: list[Sample]) -> set[float]:
            return {total(s, "ray_ingest_milvus_write_seconds_count", replica=r) for r in replicas}

        expected: dict[str, tuple[Callable[[list[Sample]], object], object]] = {
            "ok events": (lambda s: total(s, "ray_ingest_events_total", outcome="ok", **topic), VALID + 1),
            "dead letters": (
                lambda s: {
                    x.labels["reason"]: x.value
                    for x in series(s, "ray_ingest_events_total", outcome="dlq", **topic)
                },
                {code: 1.0 for code in CODES.values()},
            ),
            "chunks": (lambda s: total(s, "ray_ingest_chunks_embedded_total", **topic), stats.chunks_written),
            "tokens": (lambda s: total(s, "ray_ingest_tokens_embedded_total", **ns), tokens),
            "batch tokens": (lambda s: total(s, "ray_ingest_batch_tokens_count", **ns), batches),
            "fill ratio": (lambda s: total(s, "ray_ingest_batch_fill_ratio_count", **ns), batches),
            "embed time": (lambda s: total(s, "ray_ingest_embed_seconds_count", **ns), batches),
            "queue depth": (
                lambda s: [x.value for x in series(s, "ray_ingest_queue_depth_tokens", **ns)],
                [0.0],
            ),
            "in flight": (
                lambda s: [x.value for x in series(s, "ray_ingest_inflight_requests", **ns)],
                [0.0],
            ),
            "pending": (
                lambda s: [x.value for x in series(s, "ray_ingest_pending_requests", **ns)],
                [0.0],
            ),
            "lag": (
                lambda s: sorted(
                    (x.labels["partition"], x.value) for x in series(s, "ray_ingest_consumer_lag", **topic)
                ),
                [("0", 0.0), ("1", 0.0)],
            ),
            "milvus writes, equal per replica": (lambda s: len(writes(s)) == 1 and min(writes(s)) > 0, True),
            "end to end": (lambda s: total(s, "ray_ingest_end_to_end_seconds_count", **topic), events),
        }
        samples, problem = await scrape_until(_first_problem(expected))
        assert problem is None, problem
        assert total(samples, "ray_ingest_end_to_end_seconds_sum", **topic) > 0
        assert total(samples, "ray_ingest_actor_restarts_total", **ns) == 0

        # Every metric the code defines was exported.
        exported = {x.name for x in samples}
        for spec in (*worker_metrics.SPECS, *ingest_metrics.SPECS, *milvus_metrics.SPECS):
            # Only a restarted actor, a failed forward pass or a failed dead-letter send reports these.
            only_on_faults = (
                worker_metrics.ACTOR_RESTARTS,
                worker_metrics.FORWARD_FAILURES,
                ingest_metrics.DLQ_SEND_ERRORS,
            )
            if spec not in only_on_faults:
                assert set(spec.exported_names()) <= exported, spec.name

        # The live view shows the same run: no lag, the dead letters, one idle actor, the rows.
        view = io.StringIO()
        await watch(settings, interval_s=0.5, count=2, out=view)
        first, second = view.getvalue().strip().split("\n\n")
        assert "throughput  (measuring)" in first and "throughput  0.0 events/s" in second
        assert "lag         0 total" in second and "partition   1: lag        0" in second
        assert f"dead letters {len(MALFORMED)}" in second and "pool        1 embedder actor(s)" in second
        assert "embedder-0 [cpu]: 0 tokens/s, utilization 0%, queued 0 tokens" in second, second
        for dim in runtime.dims:
            rows = await asyncio.to_thread(runtime.sink.count, dim)
            assert f"{runtime.sink.collection_name(dim)}: {rows} rows" in second and rows > 0

        # A killed actor is restarted by Ray, and the restart is counted.
        actor = ray.get_actor("embedder-0", namespace=settings.ray.namespace)
        ray.kill(actor, no_restart=False)
        for _ in range(240):
            try:
                await actor.ready.remote()
                break
            except RayActorError:
                await asyncio.sleep(0.5)
        restarts = {"restarts": (lambda s: total(s, "ray_ingest_actor_restarts_total", **ns), 1.0)}
        _, problem = await scrape_until(_first_problem(restarts))
        assert problem is None, problem
    finally:
        runtime.close()
