"""A change of model on the real broker, Milvus Lite and Ray, with two tiny Qwen3 checkpoints of one shape.

1. A worker whose model differs from the one that made the replicas is refused (exit 2, the message says
   what to do) and writes nothing: before stamps it wrote the new model's vectors into the old replicas.
2. The way out: ``run --into-version 2`` fills new replicas from the topic while version 1 keeps answering
   searches; ``versions switch 2`` is refused while the new version lags and done once it caught up;
   searches then read version 2, a search with the old model is refused, and the old set can be dropped.
3. A dimension added to ``replicas.dims`` beside replicas that hold rows is refused, not created empty.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import ray
from harness import WorkerProcess
from helpers.kafka_io import Record, produce
from helpers.models import build_tiny_qwen3
from helpers.services import RayCluster
from helpers.settings import write_toml

from pipeline.milvus.sink import MilvusSink
from pipeline.ops import versions
from pipeline.runtime.assemble import build_runtime
from pipeline.runtime.serving import open_query_side
from pipeline.runtime.versions import fill_settings, serving_settings, version_settings
from pipeline.search.replicas import search
from pipeline.settings import ReplicaSettings, Settings
from workers.errors import ConfigError
from workers.settings import ModelSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DIMS = (64, 16)  # the tiny Qwen3's native 64 and one Matryoshka replica


def _events(first: int, count: int) -> list[Record]:
    texts = ["streaming ingestion of documents", "the quick brown fox", "matryoshka embeddings cut"]
    return [
        Record(
            key=f"doc-{i}".encode(),
            value=json.dumps({"id": f"doc-{i}", "text": f"{texts[i % 3]} number {i}"}).encode(),
        )
        for i in range(first, first + count)
    ]


def _vectors(settings: Settings) -> dict[int, dict[str, list[float]]]:
    sink = MilvusSink(settings.milvus, DIMS)
    try:
        return {dim: {row["pk"]: row["embedding"] for row in sink.fetch_all(dim)} for dim in DIMS}
    finally:
        sink.close()


def _embedder_actors() -> list[str]:
    """Every live embedder actor of the session's Ray cluster, as namespace/name."""
    named = ray.util.list_named_actors(all_namespaces=True)
    return sorted(f"{a['namespace']}/{a['name']}" for a in named if a["name"].startswith("embedder-"))


async def _fill(settings: Settings, base: Settings | None = None) -> None:
    """What ``python -m pipeline run --until-idle 2`` does, in this process."""
    runtime = await (build_runtime(settings) if base is None else build_runtime(settings, base=base))
    try:
        await runtime.new_consumer().run(until_idle_s=2.0)
    finally:
        runtime.close()


@pytest.fixture
def two_models(
    make_settings: Callable[..., Settings], milvus_lite_uri: str, tiny_qwen3_path: Path, tmp_path: Path
) -> tuple[Settings, Settings]:
    """Settings on one private topic, group and prefix: with checkpoint A, and with checkpoint B (the
    same architecture and size, other weights)."""
    a = make_settings(milvus_lite_uri, model_path=tiny_qwen3_path, dims=DIMS[1:], ray_namespace=True)
    other = build_tiny_qwen3(tmp_path / "checkpoint-b", seed=1)
    return a, a.model_copy(update={"model": ModelSettings(name_or_path=str(other))})


async def test_a_worker_of_another_checkpoint_is_refused_and_writes_nothing(
    two_models: tuple[Settings, Settings], ray_cluster: RayCluster, ray_session: None, tmp_path: Path
) -> None:
    a, b = two_models
    await produce(a.kafka, _events(0, 12))
    await _fill(a)
    before = _vectors(a)
    assert len(before[64]) == 12
    await produce(a.kafka, _events(12, 4))  # new events the refused worker must not write
    actors = _embedder_actors()
    # detached, as in production: a refused worker must still not leave its actors behind
    b = b.model_copy(update={"pool": b.pool.model_copy(update={"detached": True})})
    worker = WorkerProcess(write_toml(b, tmp_path / "b.toml"), ray_cluster.address, ray_cluster.env, tmp_path)
    worker.start("--until-idle", "2")
    try:
        code = worker.wait(300)
    finally:
        worker.stop()
    log = worker.log()
    assert code == 2, log[-4000:]
    assert "was made by" in log and "run --into-version 2" in log and "versions switch 2" in log, log[-4000:]
    assert _vectors(a) == before, "the refused worker wrote into the replicas of the other model"
    assert _embedder_actors() == actors, "the refused worker left its embedder actors running"


async def test_a_new_version_fills_while_the_old_serves_then_switches(
    two_models: tuple[Settings, Settings], ray_session: None
) -> None:
    a, b = two_models
    await produce(a.kafka, _events(0, 12))
    await _fill(a)
    # version 2 (checkpoint B): its own collections, group and actors, from the start of the topic
    v2 = fill_settings(b, 2)
    await _fill(v2, base=b)
    one, two = _vectors(a), _vectors(v2)
    assert set(one[64]) == set(two[64]) and len(two[64]) == 12
    assert not np.allclose(one[64]["doc-0#0"], two[64]["doc-0#0"], atol=1e-3), "B's vectors equal A's"
    # version 1 still serves, with model A
    serving = await serving_settings(a)
    assert serving.milvus.collection_prefix == a.milvus.collection_prefix
    async with open_query_side(serving, "search", a) as side:
        hits = await search(serving, side.pool, side.sink, ["the quick brown fox"], top_k=3)
    assert len(hits[0].hits) == 3
    # switch is refused while version 2 lags the topic, and done once it caught up
    await produce(a.kafka, _events(12, 2))
    with pytest.raises(ConfigError, match=r"events behind the topic.*--force"):
        await versions.switch(b, 2)
    await _fill(v2, base=b)
    print(await versions.switch(b, 2))
    serving = await serving_settings(b)
    assert serving.milvus.collection_prefix == f"{b.milvus.collection_prefix}_v2"
    async with open_query_side(serving, "search", b) as side:
        assert side.sink.collection_name(64) == f"{b.milvus.collection_prefix}_v2_64"
        hits = await search(serving, side.pool, side.sink, ["the quick brown fox"], top_k=3)
    assert len(hits[0].hits) == 3
    # the old model cannot read the new version's vectors
    serving_a = await serving_settings(a)
    with pytest.raises(ConfigError, match="was made by"):
        async with open_query_side(serving_a, "search", a):
            pass
    # a dimension added beside replicas that hold rows is refused, not created empty
    wider = b.model_copy(update={"replicas": ReplicaSettings(dims=(16, 8))})
    with pytest.raises(ConfigError, match=r"asks for \[8\].*run --into-version 3"):
        await _fill(version_settings(wider, 2), base=wider)
    # the serving version cannot be dropped; the old one can
    with pytest.raises(ConfigError, match="is serving"):
        await versions.drop(b, 2)
    print(await versions.drop(b, 1))
    report = await versions.list_report(b)
    assert "version 1" not in report and "version 2 (serving)" in report, report
