"""The HTTP API follows `versions switch` (Milvus Lite file, MiniLM in-process): each search reads the
serving version's replicas, and a version made by another model is answered 503 saying what to do."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import aiohttp
from helpers.app_server import serving
from helpers.fakes import ModelQueryPool

from pipeline.documents import ChunkRow, UpsertDocument
from pipeline.milvus.connection import MilvusConnection
from pipeline.milvus.model_stamp import stamp_of
from pipeline.milvus.sink import MilvusSink
from pipeline.runtime.version_follower import VersionFollower
from pipeline.runtime.versions import prepare_replicas, set_serving, version_settings
from pipeline.search.api import Api
from pipeline.settings import MilvusSettings, ReplicaSettings, Settings
from workers.model.embedding_model import EmbeddingModel
from workers.settings import ModelSettings

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DIMS = (384, 64)


def _fill(settings: Settings, model: EmbeddingModel, doc: str, text: str) -> None:
    sink = MilvusSink(settings.milvus, DIMS)
    try:
        vectors = model.embed([text], DIMS)
        assert not sink.write([UpsertDocument(doc, [ChunkRow(doc, 0, text, {})], vectors)]).rejected
    finally:
        sink.close()


async def test_the_api_follows_a_switch_and_refuses_a_version_of_another_model(tmp_path: Path) -> None:
    model = EmbeddingModel.load(ModelSettings(name_or_path=MODEL), device="cpu")
    base = Settings(
        milvus=MilvusSettings(uri=str(tmp_path / "lite.db"), collection_prefix="docs", index_type="FLAT"),
        replicas=ReplicaSettings(dims=DIMS[1:]),
        model=ModelSettings(name_or_path=MODEL),
    )
    stamp = stamp_of(model.info(), base.model)
    v2, v3 = version_settings(base, 2), version_settings(base, 3)
    prepare_replicas(base, base, stamp, DIMS)
    prepare_replicas(base, v2, stamp, DIMS)
    prepare_replicas(base, v3, replace(stamp, model="other", revision="x"), DIMS)
    _fill(base, model, "in-v1", "copy files over ssh")
    _fill(v2, model, "in-v2", "copy files over ssh")
    connection = MilvusConnection(base.milvus)
    sink = MilvusSink(base.milvus, DIMS)
    follower = VersionFollower(base, model.info(), sink, "docs", interval_s=0.0)
    app = Api(base, ModelQueryPool(model), model.tokenizer, sink, follow=follower.sink).app()
    body = {"query": "ssh", "top_k": 1, "funnel_factor": 2, "dim": 64}
    try:
        async with serving(app) as url:

            async def ask() -> tuple[int, dict[str, object]]:
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(f"{url}/v1/search", json=body) as reply,
                ):
                    return reply.status, await reply.json()

            assert (await ask())[1]["data"][0]["hits"][0]["doc_id"] == "in-v1"  # type: ignore[index]
            set_serving(connection, "docs", 2)
            assert (await ask())[1]["data"][0]["hits"][0]["doc_id"] == "in-v2"  # type: ignore[index]
            set_serving(connection, "docs", 3)
            status, error = await ask()
            assert status == 503, error
            message = error["error"]["message"]  # type: ignore[index]
            assert "made by other" in message and "restart `python -m pipeline serve`" in message
            set_serving(connection, "docs", 2)  # switched back: served again
            assert (await ask())[0] == 200
    finally:
        follower.close()
        sink.close()
        connection.close()
