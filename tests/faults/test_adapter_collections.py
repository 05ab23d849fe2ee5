"""LoRA adapters per collection on the real broker, Milvus Lite and Ray: two pipelines (two collection
prefixes, two adapters) share one namespace's embedder actor, the base model loaded once.

1. Each pipeline's documents are embedded with its own adapter: the stored vectors equal those of the
   model with that adapter merged, computed here, and differ from the other's.
2. A search of a collection, configured without an adapter, embeds its queries with the adapter the
   collection records: the scores are those of that adapter's query vectors, not the base model's.
3. A worker or a search configured with another adapter than a collection records is refused, like a
   worker of another model, and writes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers.kafka_io import Record, produce
from helpers.models import write_lora_adapter

from pipeline.milvus.sink import MilvusSink
from pipeline.runtime.assemble import build_runtime
from pipeline.runtime.embedders import stop_embedders
from pipeline.runtime.serving import open_query_side
from pipeline.search.replicas import search
from pipeline.settings import Settings
from workers.errors import ConfigError
from workers.model.embedding_model import EmbeddingModel
from workers.prompts import format_query
from workers.settings import ModelSettings
from workers.spawn import list_embedders

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
pytest.importorskip("peft")

DIMS = (64, 16)
TEXTS = ["streaming ingestion of documents", "the quick brown fox", "matryoshka embeddings cut"]
QUERY = "brown fox"


def _events(count: int, first: int = 0) -> list[Record]:
    return [
        Record(
            key=f"doc-{i}".encode(),
            value=json.dumps({"id": f"doc-{i}", "text": f"{TEXTS[i % 3]} number {i}"}).encode(),
        )
        for i in range(first, first + count)
    ]


def _stored(settings: Settings) -> dict[str, np.ndarray]:
    sink = MilvusSink(settings.milvus, DIMS)
    try:
        return {row["pk"]: np.asarray(row["embedding"]) for row in sink.fetch_all(64)}
    finally:
        sink.close()


async def _fill(settings: Settings) -> None:
    """What ``python -m pipeline run --until-idle 2`` does, in this process."""
    runtime = await build_runtime(settings)
    try:
        await runtime.new_consumer().run(until_idle_s=2.0)
    finally:
        runtime.close()


@pytest.fixture(scope="module")
def adapters(tiny_qwen3_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("collection-adapters")
    return {name: str(write_lora_adapter(tiny_qwen3_path, root / name, seed=60 + i)) for i, name in
            enumerate(["legal", "medical"])}  # fmt: skip


@pytest.fixture
def pipelines(
    make_settings: Callable[..., Settings],
    milvus_lite_uri: str,
    tiny_qwen3_path: Path,
    adapters: dict[str, str],
    ray_session: None,
) -> Iterator[dict[str, Settings]]:
    """Two pipelines, each on its private topic, group and prefix, with adapter legal and medical; their
    actors are shared (detached, in one namespace) and stopped afterwards."""
    made: dict[str, Settings] = {}
    namespace = None
    for name in adapters:
        settings = make_settings(
            milvus_lite_uri, model_path=tiny_qwen3_path, dims=DIMS[1:], ray_namespace=True, name=name
        )
        namespace = namespace or settings.ray.namespace
        model = ModelSettings(
            name_or_path=str(tiny_qwen3_path), dtype="float32", adapters=adapters, adapter=name
        )
        made[name] = settings.model_copy(
            update={
                "model": model,
                "ray": settings.ray.model_copy(update={"namespace": namespace}),
                "pool": settings.pool.model_copy(update={"detached": True}),
            }
        )
    yield made
    stop_embedders(made["legal"])


def _model(base: Path, adapter: str | None = None) -> EmbeddingModel:
    return EmbeddingModel.load(
        ModelSettings(name_or_path=str(base), dtype="float32", lora_path=adapter), "cpu"
    )


async def test_each_collection_is_embedded_and_searched_with_its_own_adapter(
    pipelines: dict[str, Settings], adapters: dict[str, str], tiny_qwen3_path: Path
) -> None:
    documents = {f"doc-{i}#0": f"{TEXTS[i % 3]} number {i}" for i in range(9)}
    for settings in pipelines.values():
        await produce(settings.kafka, _events(9))
        await _fill(settings)
    # One actor, one load of the base model, served both pipelines.
    assert len(list_embedders(pipelines["legal"].ray.namespace)) == 1
    merged = {name: _model(tiny_qwen3_path, folder) for name, folder in adapters.items()}
    pks = sorted(documents)
    for name, settings in pipelines.items():
        stored = _stored(settings)
        assert sorted(stored) == pks
        expected = merged[name].embed([documents[pk] for pk in pks], [64])[64]
        cosines = np.sum(np.stack([stored[pk] for pk in pks]) * expected, axis=1)
        assert cosines.min() >= 0.9999, (name, cosines)
    legal, medical = _stored(pipelines["legal"]), _stored(pipelines["medical"])
    assert not np.allclose(legal["doc-0#0"], medical["doc-0#0"], atol=1e-3)

    base = _model(tiny_qwen3_path)
    for name, settings in pipelines.items():
        # Configured without an adapter: the search follows what the collection records.
        unset = settings.model_copy(update={"model": settings.model.model_copy(update={"adapter": None})})
        async with open_query_side(unset, "search") as side:
            assert side.adapter == name
            assert sorted(side.pool.info.adapters) == ["legal", "medical"]
            results = await search(unset, side.embedder, side.sink, [QUERY], dim=64, top_k=3)
        stored = _stored(settings)
        task = unset.search.task_for(unset.milvus.collection_prefix)
        text = format_query(unset.model, "qwen3", QUERY, task)
        for model, should_match in ((merged[name], True), (base, False)):
            query = model.embed([text], [64])[64][0]
            scores = [float(stored[hit.pk] @ query) for hit in results[0].hits]
            matches = np.allclose([hit.score for hit in results[0].hits], scores, atol=1e-4)
            assert matches == should_match, (name, should_match, scores, results[0].hits)


async def test_another_adapter_than_the_collection_records_is_refused(pipelines: dict[str, Settings]) -> None:
    legal = pipelines["legal"]
    await produce(legal.kafka, _events(3))
    await _fill(legal)
    before = _stored(legal)
    wrong = legal.model_copy(update={"model": legal.model.model_copy(update={"adapter": "medical"})})
    await produce(legal.kafka, _events(6, first=100))  # events the refused worker must not write
    with pytest.raises(ConfigError, match=r"was made by.*named_adapter: 'legal@"):
        await _fill(wrong)
    assert _stored(legal).keys() == before.keys() == {"doc-0#0", "doc-1#0", "doc-2#0"}, "it wrote"
    with pytest.raises(ConfigError, match=r"was made by.*LoRA adapter legal@"):
        async with open_query_side(wrong, "search"):
            pass
