"""Scenario 8: soak.  200,000 small events through the CPU stack — the real broker, the worker
as its own process (``python -m pipeline run``), one embedder actor with a tiny random Qwen3 on
the session's Ray, Milvus Lite.  The worker's RSS (and the actor's) sampled with psutil after the
first 20,000 events are committed may grow by less than 10% (the actor's by less than 25%)
until the last one is; the test
prints the sustained events/s (committed events over wall time between those two points).

``EMBEDSTREAM_SOAK_RESULTS=tests/perf/results/soak-cpu.json pytest -s tests/faults/test_soak.py``
also writes the figures as JSON (CI only asserts the bounds).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import ray
from harness import WorkerProcess
from helpers.kafka_io import CommitWatcher
from helpers.oracle import SHORT_WORDS
from helpers.services import RayCluster
from helpers.settings import write_toml

from pipeline.ingest.kafka import ensure_topics
from pipeline.ingest.produce import OutgoingRecord, send_records
from pipeline.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

EVENTS = int(os.environ.get("EMBEDSTREAM_SOAK_EVENTS", "200000"))
WARMUP = 20_000
MAX_GROWTH = 0.10  # the worker's bound (the issue's)
MAX_ACTOR_GROWTH = 0.25  # looser: torch's CPU allocator keeps blocks per batch shape (8.5% measured)


def small_events(n: int, seed: int = 8) -> list[OutgoingRecord]:
    """Upserts of 4–12 words over 20,000 ids (so later events update earlier documents)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        doc_id = f"s-{rng.randrange(20_000)}"
        text = " ".join(rng.choice(SHORT_WORDS) for _ in range(rng.randint(4, 12)))
        records.append(
            OutgoingRecord(doc_id.encode(), json.dumps({"id": doc_id, "text": f"{text} {i}"}).encode())
        )
    return records


def embedder_pids(dashboard_url: str) -> list[int]:
    """Processes of the live embedder actors of fault-test workers on this session's Ray."""
    from ray.util.state import list_actors

    actors = list_actors(address=dashboard_url, filters=[("state", "=", "ALIVE")], detail=True, limit=1000)
    return [
        a.pid
        for a in actors
        if a.name and a.name.startswith("embedder-") and str(a.ray_namespace).startswith("faults-")
    ]


def rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += psutil.Process(pid).memory_info().rss
    return total


async def test_soak_rss_stays_flat_and_reports_events_per_second(
    make_settings: Callable[..., Settings],
    milvus_lite_uri: str,
    tiny_qwen3_path: Path,
    ray_cluster: RayCluster,
    ray_session: None,
    tmp_path: Path,
) -> None:
    assert ray.is_initialized()
    settings = make_settings(
        milvus_lite_uri,
        model_path=tiny_qwen3_path,
        dims=(),
        consumer={"commit_interval_s": 1.0, "max_batch_events": 256},
    )
    await ensure_topics(settings.kafka)
    worker = WorkerProcess(
        write_toml(settings, tmp_path / "soak.toml"), ray_cluster.address, ray_cluster.env, tmp_path
    )
    records = small_events(EVENTS)
    producing = asyncio.create_task(send_records(settings.kafka, records))
    worker.start("--until-idle", "15")
    try:
        samples: list[dict[str, Any]] = []
        baseline: dict[str, Any] | None = None
        deadline = time.monotonic() + 1500  # generous: a busy 2-core box did ~400 events/s
        done = 0
        async with CommitWatcher(settings.kafka) as watcher:
            while done < EVENTS:
                assert worker.proc is not None and worker.proc.poll() is None, worker.log()[-4000:]
                assert time.monotonic() < deadline, f"only {done} of {EVENTS} events committed"
                await asyncio.sleep(2.0)
                done = await watcher.total()
                actors = embedder_pids(ray_cluster.dashboard_url)
                sample = {
                    "t": time.monotonic(),
                    "committed": done,
                    "worker_rss": rss([worker.proc.pid]),
                    "actor_rss": rss(actors),
                }
                samples.append(sample)
                if baseline is None and done >= WARMUP:
                    assert actors, "no embedder actor found"
                    baseline = sample
        await producing
        assert baseline is not None
        after = [s for s in samples if s["t"] > baseline["t"]]
        worker_growth = max(s["worker_rss"] for s in after) / baseline["worker_rss"] - 1
        actor_growth = max(s["actor_rss"] for s in after) / baseline["actor_rss"] - 1
        events_per_s = (samples[-1]["committed"] - baseline["committed"]) / (samples[-1]["t"] - baseline["t"])
        figures = {
            "events": EVENTS,
            "events_per_s": round(events_per_s, 1),
            "worker_rss_mib_at_20k": round(baseline["worker_rss"] / 2**20, 1),
            "worker_rss_growth": round(worker_growth, 4),
            "actor_rss_mib_at_20k": round(baseline["actor_rss"] / 2**20, 1),
            "actor_rss_growth": round(actor_growth, 4),
            "wall_s_after_20k": round(samples[-1]["t"] - baseline["t"], 1),
            "cpu_count": os.cpu_count(),
            "command": "EMBEDSTREAM_SOAK_RESULTS=... pytest -s tests/faults/test_soak.py",
        }
        print("soak:", json.dumps(figures))
        if out := os.environ.get("EMBEDSTREAM_SOAK_RESULTS"):
            Path(out).write_text(json.dumps(figures | {"samples": samples}, indent=2) + "\n")
        assert worker_growth < MAX_GROWTH, figures
        assert actor_growth < MAX_ACTOR_GROWTH, figures
        assert worker.wait(120) == 0, worker.log()[-4000:]
    finally:
        producing.cancel()
        worker.stop()
