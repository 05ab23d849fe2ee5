"""The HTTP API driven by the real `openai` client on localhost; the packaged MiniLM embeds in-process
(its real batcher and query lane, without the Ray hop), /v1/search runs on the session's Milvus Lite."""

from __future__ import annotations

import asyncio
import base64
import threading
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import openai
import pytest
from helpers.app_server import serving

from pipeline.documents import ChunkRow, UpsertDocument
from pipeline.milvus.sink import MilvusSink
from pipeline.ops import processes
from pipeline.search.api import Api
from pipeline.search.routing import NO_PROFILE_REASON
from pipeline.settings import MilvusSettings, Settings
from workers.batcher import MicroBatcher
from workers.model.embedding_model import EmbeddingModel, ModelInfo
from workers.prompts import format_query
from workers.settings import BatchSettings, ModelSettings

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DOCS = {
    "ls": "ls lists the contents of a directory, one file name per line or in columns.",
    "tar": "tar stores many files in one archive and extracts them again; it can compress with gzip.",
    "ssh": "ssh logs into a remote machine over an encrypted connection and runs commands there.",
}


class LocalPool:
    """The pool's query path in this process: the model behind a real MicroBatcher's query lane."""

    def __init__(self, model: EmbeddingModel, settings: ModelSettings) -> None:
        self.model, self.settings = model, settings
        self.batcher = MicroBatcher(model.embed_ids, BatchSettings(max_wait_ms=1))

    @property
    def info(self) -> ModelInfo:
        return self.model.info()

    async def embed_queries(
        self, queries: list[str], dims: tuple[int, ...], task: str | None = None
    ) -> dict[int, np.ndarray]:
        texts = [format_query(self.settings, self.info.model_type, q, task) for q in queries]
        return await self.batcher.submit(self.model.encode_ids(texts), dims, priority=True)


@pytest.fixture(scope="module")
def minilm(minilm_path: Path) -> EmbeddingModel:
    return EmbeddingModel.load(ModelSettings(name_or_path=MODEL), device="cpu")


async def _serve(
    settings: Settings, pool: LocalPool, sink: MilvusSink, tokenizer: Any = None
) -> AsyncIterator[str]:
    try:
        async with serving(Api(settings, pool, tokenizer or pool.model.tokenizer, sink).app()) as url:
            yield url
    finally:
        await pool.batcher.close()


@pytest.fixture
async def api(minilm: EmbeddingModel) -> AsyncIterator[str]:
    # Nothing listens on the sink's port: embeddings and refused searches never reach Milvus (a call
    # would come back as a 503).
    milvus = {"uri": f"http://127.0.0.1:{processes.free_port()}", "timeout_s": 2.0}
    settings = Settings.model_validate({"replicas": {"dims": [64]}, "milvus": milvus})
    sink = MilvusSink(settings.milvus, settings.replicas.replica_dims(minilm.info().native_dim))
    async for url in _serve(settings, LocalPool(minilm, settings.model), sink):
        yield url


class SlowTokenizer:
    """Counts tokens like the model's tokenizer, holding its thread for ``seconds`` first; ``began``
    is set when a count starts."""

    def __init__(self, tokenizer: Any, seconds: float) -> None:
        self._tokenizer, self._seconds = tokenizer, seconds
        self.began = threading.Event()

    def encode(self, texts: list[str]) -> list[list[int]]:
        self.began.set()
        time.sleep(self._seconds)  # a large request's tokenization, as the thread running it feels it
        return self._tokenizer.encode(texts)  # type: ignore[no-any-return]


async def test_counting_a_large_requests_tokens_does_not_block_other_requests(minilm: EmbeddingModel) -> None:
    milvus = {"uri": f"http://127.0.0.1:{processes.free_port()}", "timeout_s": 2.0}
    settings = Settings.model_validate({"milvus": milvus})
    sink = MilvusSink(settings.milvus, (minilm.info().native_dim,))
    slow = SlowTokenizer(minilm.tokenizer, seconds=3.0)

    def health_latency(url: str) -> float:
        """Seconds /health takes once a count is under way, asked from outside the event loop."""
        assert slow.began.wait(30), "the embeddings request never counted its tokens"
        started = time.monotonic()
        with urllib.request.urlopen(f"{url}/health", timeout=30) as health:
            assert health.status == 200
        return time.monotonic() - started

    async for url in _serve(settings, LocalPool(minilm, settings.model), sink, slow):
        probing = asyncio.create_task(asyncio.to_thread(health_latency, url))
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/v1/embeddings", json={"input": ["x"]}) as reply,
        ):
            assert reply.status == 200
            assert (await reply.json())["usage"]["prompt_tokens"] == len(minilm.encode_ids(["x"])[0])
        latency = await probing
        assert latency < 1.0, f"/health waited {latency:.1f} s for another request's token count"


def client(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


async def test_openai_client_float_base64_single_batch_and_dimensions(
    api: str, minilm: EmbeddingModel
) -> None:
    texts = ["list directory contents", "copy files over ssh", "Größe 東京"]
    expected = minilm.embed(texts, [384])[384]
    oai = client(api)
    single = await oai.embeddings.create(model=MODEL, input=texts[0], encoding_format="float")
    assert single.model == MODEL and single.object == "list" and len(single.data) == 1
    assert single.data[0].index == 0
    np.testing.assert_allclose(single.data[0].embedding, expected[0], atol=1e-5)
    assert single.usage.prompt_tokens == single.usage.total_tokens == len(minilm.encode_ids(texts[:1])[0])

    batch = await oai.embeddings.create(model=MODEL, input=texts, encoding_format="base64")
    assert [d.index for d in batch.data] == [0, 1, 2]
    raw = [np.frombuffer(base64.b64decode(str(d.embedding)), dtype="<f4") for d in batch.data]
    np.testing.assert_allclose(np.stack(raw), expected, atol=1e-5)
    assert batch.usage.prompt_tokens == sum(len(ids) for ids in minilm.encode_ids(texts))

    # Without encoding_format the client asks for base64 and decodes it itself.
    default = await oai.embeddings.create(model=MODEL, input=texts)
    np.testing.assert_allclose(np.array([d.embedding for d in default.data]), expected, atol=1e-5)

    for encoding in ("float", "base64"):
        cut = await oai.embeddings.create(model=MODEL, input=texts, dimensions=64, encoding_format=encoding)
        rows = [
            np.frombuffer(base64.b64decode(str(d.embedding)), dtype="<f4")
            if encoding == "base64"
            else d.embedding
            for d in cut.data
        ]
        prefix = expected[:, :64] / np.linalg.norm(expected[:, :64], axis=1, keepdims=True)
        np.testing.assert_allclose(np.array(rows), prefix, atol=1e-5)  # Matryoshka cut, renormalized

    models = await oai.models.list()
    assert [m.id for m in models.data] == [MODEL]


@pytest.mark.parametrize(
    ("request_args", "status", "message"),
    [
        ({"input": []}, 400, "non-empty list"),
        ({"input": [[101, 2023, 102]]}, 400, "token-id inputs are not supported"),
        ({"input": [1, 2, 3]}, 400, "token-id inputs are not supported"),
        ({"input": ["ok", ""]}, 400, "empty strings"),
        ({"input": "x", "dimensions": 0}, 400, "'dimensions' must be an integer in 1..384"),
        ({"input": "x", "dimensions": 385}, 400, "'dimensions' must be an integer in 1..384"),
        ({"input": "x", "encoding_format": "int8"}, 400, "encoding_format"),
        ({"input": "x", "model": "text-embedding-3-small"}, 404, "is not served here"),
    ],
)
async def test_bad_requests_get_openai_style_errors(
    api: str, request_args: dict[str, Any], status: int, message: str
) -> None:
    args: dict[str, Any] = {"model": MODEL, **request_args}
    with pytest.raises(openai.APIStatusError) as failed:
        await client(api).embeddings.create(**args)
    assert failed.value.status_code == status
    assert message in failed.value.message
    body = failed.value.body
    assert isinstance(body, dict) and body["type"] == "invalid_request_error"


async def test_malformed_json_is_a_400(api: str) -> None:
    async with aiohttp.ClientSession() as http, http.post(f"{api}/v1/embeddings", data=b"{nope") as response:
        assert response.status == 400
        assert "not valid JSON" in (await response.json())["error"]["message"]


@pytest.mark.parametrize(
    ("body", "product"),
    [
        ({"top_k": 1000, "funnel_factor": 17}, "top_k 1000 × funnel factor 17 = 17000"),
        ({"funnel_factor": 410, "per_document": True}, "top_k 10 × 4 (per-document over-fetch) × funnel"),
        ({"top_k": 500, "funnel_factor": 40, "dim": 384}, "top_k 500 × funnel factor 40 = 20000"),
    ],
)
async def test_a_search_over_the_milvus_limit_is_a_400_naming_it(
    api: str, body: dict[str, Any], product: str
) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{api}/v1/search", json={"query": ["a", "b"], **body}) as response,
    ):
        assert response.status == 400, await response.text()
        error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"].startswith(product)
    assert "over Milvus' limit of 16384 per search" in error["message"]


async def test_search_endpoint_direct_funnel_and_errors(minilm: EmbeddingModel, milvus_lite_uri: str) -> None:
    milvus = MilvusSettings(uri=milvus_lite_uri, collection_prefix="api_test")
    settings = Settings.model_validate({"replicas": {"dims": [64]}, "milvus": milvus.model_dump()})
    sink = MilvusSink(milvus, (384, 64))
    sink.ensure_collections()
    vectors = minilm.embed(list(DOCS.values()), [384, 64])
    writes = [
        UpsertDocument(doc, [ChunkRow(doc, 0, text, {})], {d: vectors[d][i : i + 1] for d in (384, 64)})
        for i, (doc, text) in enumerate(DOCS.items())
    ]
    assert not sink.write(writes).rejected
    async for url in _serve(settings, LocalPool(minilm, settings.model), sink):
        async with aiohttp.ClientSession() as http:
            for extra, strategy in (({}, "replica 384d"), ({"funnel_factor": 2, "dim": 64}, "funnel 64d×2")):
                body = {
                    "query": ["pack files into an archive", "log in to a remote host"],
                    "top_k": 2,
                    **extra,
                }
                async with http.post(f"{url}/v1/search", json=body) as response:
                    assert response.status == 200, await response.text()
                    data = (await response.json())["data"]
                assert [r["strategy"] for r in data] == [strategy] * 2
                assert [r["routing"] for r in data] == [None] * 2  # the request named the replica
                assert [r["hits"][0]["doc_id"] for r in data] == ["tar", "ssh"]
                assert data[0]["hits"][0]["text"] == DOCS["tar"] and len(data[0]["hits"]) == 2
            # No profile was measured (search.profile_path unset): a recall target gets the native
            # replica, and the answer says so instead of pretending to know the recall of the others.
            body = {"query": "pack files into an archive", "top_k": 1, "recall_target": 0.9}
            async with http.post(f"{url}/v1/search", json=body) as response:
                assert response.status == 200, await response.text()
                (routed,) = (await response.json())["data"]
            assert routed["strategy"] == "replica 384d" and routed["hits"][0]["doc_id"] == "tar"
            assert routed["routing"] == NO_PROFILE_REASON
            async with http.post(f"{url}/v1/search", json={"query": "x", "dim": 100}) as response:
                assert response.status == 400
                assert "no replica of dimension 100" in (await response.json())["error"]["message"]
    sink.close()


async def test_an_input_over_the_models_limit_is_a_400_not_a_truncated_vector(api: str) -> None:
    """OpenAI answers 400 ``context_length_exceeded``; embedding the first 256 tokens instead would
    return a vector of another text."""
    too_long = "list directory contents " * 200  # 600+ WordPiece tokens; MiniLM takes 256
    with pytest.raises(openai.BadRequestError) as refused:
        await client(api).embeddings.create(model=MODEL, input=["ok", too_long])
    assert refused.value.code == "context_length_exceeded" and "refused, not truncated" in str(refused.value)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{api}/v1/search", json={"query": too_long}) as reply,
    ):
        assert reply.status == 400
        assert (await reply.json())["error"]["code"] == "context_length_exceeded"
