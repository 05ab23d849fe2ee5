"""`serve` keeps the LoRA adapter it started with across `versions switch` (Milvus Lite file, MiniLM
in-process): a version that records the same adapter is followed, one that records another is a 503."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import aiohttp
from helpers.app_server import serving
from helpers.fakes import ModelQueryPool

from pipeline.milvus.connection import MilvusConnection
from pipeline.milvus.model_stamp import stamp_of
from pipeline.milvus.sink import MilvusSink
from pipeline.runtime.version_follower import VersionFollower
from pipeline.runtime.versions import prepare_replicas, set_serving, version_settings
from pipeline.search.api import Api
from pipeline.settings import MilvusSettings, ReplicaSettings, Settings
from workers.model.embedding_model import EmbeddingModel, ModelInfo
from workers.settings import ModelSettings

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DIMS = (384, 64)


async def test_a_switch_to_a_version_of_another_adapter_is_refused(tmp_path: Path) -> None:
    model = EmbeddingModel.load(ModelSettings(name_or_path=MODEL), device="cpu")
    base = Settings(
        milvus=MilvusSettings(uri=str(tmp_path / "lite.db"), collection_prefix="docs", index_type="FLAT"),
        replicas=ReplicaSettings(dims=DIMS[1:]),
        model=ModelSettings(name_or_path=MODEL),
    )
    # What the actors report: MiniLM with two unmerged adapters (the searches here embed no query).
    info = replace(
        model.info(), adapters={"legal": "/a/legal@aaaaaaaaaaaa", "medical": "/a/medical@bbbbbbbbbbbb"}
    )
    legal, medical = stamp_of(info, base.model, "legal"), stamp_of(info, base.model, "medical")
    v2, v3 = version_settings(base, 2), version_settings(base, 3)
    prepare_replicas(base, base, legal, DIMS)
    prepare_replicas(base, v2, legal, DIMS)
    prepare_replicas(base, v3, medical, DIMS)
    connection = MilvusConnection(base.milvus)
    sink = MilvusSink(base.milvus, DIMS)
    follower = VersionFollower(base, info, sink, "docs", interval_s=0.0, adapter="legal")
    pool = ModelQueryPool(model)
    api = Api(base, pool, model.tokenizer, sink, follow=follower.sink, adapter="legal")
    try:
        async with serving(api.app()) as url:

            async def status() -> tuple[int, str]:
                async with (
                    aiohttp.ClientSession() as session,
                    session.post(f"{url}/v1/search", json={"query": "ssh"}) as reply,
                ):
                    return reply.status, await reply.text()

            set_serving(connection, "docs", 2)
            assert await follower.sink() is not sink  # followed: same adapter
            set_serving(connection, "docs", 3)
            code, text = await status()
            assert code == 503 and "LoRA adapter medical@bbbbbbbbbbbb" in text, text
    finally:
        follower.close()
        sink.close()
        connection.close()


def test_model_info_without_adapters_is_still_read() -> None:
    """A ModelInfo pickled by an actor of an older version has no ``adapters``: the stamp still works."""
    info = ModelInfo(name="m", native_dim=8, max_length=8, device="cpu", dtype="float32", pooling="mean")
    del info.__dict__["adapters"]
    assert stamp_of(info, ModelSettings(name_or_path="m")).named_adapter == ""
