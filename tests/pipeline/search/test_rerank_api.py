"""POST /v1/rerank on a real aiohttp server, scored by RerankerPool actors on the session's real Ray
(the tiny cross-encoder), asked with raw aiohttp client requests in the TEI, Jina and Cohere schemas:
the ordering and scores, the documents echoed, refusals, API keys, 429 and the deadline."""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import pytest_asyncio
import ray
from helpers.app_server import serving
from helpers.fakes import ModelQueryPool

from pipeline.milvus.sink import MilvusSink
from pipeline.ops import processes
from pipeline.search.api import Api
from pipeline.settings import Settings
from workers.errors import Backpressure
from workers.model.embedding_model import EmbeddingModel
from workers.model.reranker_model import RerankerModel
from workers.reranker_actor import RerankerActor
from workers.reranker_pool import RerankerPool
from workers.settings import ModelSettings

pytestmark = pytest.mark.asyncio(loop_scope="module")

QUERY = "how do volcanoes form"
DOCUMENTS = [
    "Sourdough bread rises because wild yeast ferments the dough.",
    "Volcanoes form where magma from the mantle rises through cracks in the crust.",
    "The tides follow the moon.",
    "Plate tectonics moves the crust; volcanoes sit on plate boundaries.",
]
KEY = "sk-rerank-test-key"
NAMESPACE = f"rerank-api-{uuid.uuid4().hex[:8]}"


class BusyReranker(RerankerActor):
    """Refuses every call as a full queue would."""

    async def score(self, query: str, documents: list[str], instruction: str | None = None) -> np.ndarray:
        raise Backpressure("queue full", retry_after=0.2)


class SlowReranker:
    """An in-process reranker that takes longer than any deadline of these tests."""

    async def score(
        self, query: str, documents: Sequence[str], instruction: str | None = None
    ) -> list[float]:
        await asyncio.sleep(60)
        return [0.0] * len(documents)


def _settings(folder: Path, **api: Any) -> Settings:
    milvus = {"uri": f"http://127.0.0.1:{processes.free_port()}", "timeout_s": 2.0}
    reranker = {"name_or_path": str(folder), "num_actors": 1, "cpus_per_actor": 0.5, "backpressure_s": 0.5}
    return Settings.model_validate({"milvus": milvus, "api": api, "reranker": reranker})


@pytest.fixture(scope="module")
def query_pool(minilm_path: Path) -> ModelQueryPool:
    settings = ModelSettings(name_or_path="sentence-transformers/all-MiniLM-L6-v2")
    return ModelQueryPool(EmbeddingModel.load(settings, device="cpu"))


async def _serve(settings: Settings, pool: ModelQueryPool, reranker: Any) -> AsyncIterator[str]:
    sink = MilvusSink(settings.milvus, (pool.info.native_dim,))
    api = Api(settings, pool, pool.model.tokenizer, sink, reranker=reranker)
    try:
        async with serving(api.runner()) as url:
            yield url
    finally:
        sink.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def reranker(ray_session: None, tiny_cross_encoder_path: Path) -> AsyncIterator[RerankerPool]:
    settings = _settings(tiny_cross_encoder_path).reranker
    assert settings is not None
    pool = await RerankerPool.start(settings, namespace=NAMESPACE)
    try:
        yield pool
    finally:
        pool.shutdown()


@pytest_asyncio.fixture(loop_scope="module")
async def url(
    reranker: RerankerPool, query_pool: ModelQueryPool, tiny_cross_encoder_path: Path
) -> AsyncIterator[str]:
    async for served in _serve(_settings(tiny_cross_encoder_path), query_pool, reranker):
        yield served


async def _post(url: str, body: object, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/rerank", json=body, headers=headers) as r,
    ):
        return r.status, await r.json(), r.headers


async def test_jina_and_cohere_requests_get_the_best_documents_first_with_their_scores(
    url: str, tiny_cross_encoder_path: Path
) -> None:
    local = RerankerModel.load(_settings(tiny_cross_encoder_path).reranker, "cpu")  # type: ignore[arg-type]
    expected = local.score(QUERY, DOCUMENTS)
    order = list(np.argsort(-expected, kind="stable"))
    body = {"model": str(tiny_cross_encoder_path), "query": QUERY, "documents": DOCUMENTS, "top_n": 2}
    status, answer, _ = await _post(url, body | {"return_documents": True})
    assert status == 200, answer
    assert [r["index"] for r in answer["results"]] == order[:2]
    for result in answer["results"]:
        assert result["relevance_score"] == pytest.approx(float(expected[result["index"]]), abs=1e-5)
        assert result["document"] == {"text": DOCUMENTS[result["index"]]}
    assert answer["model"] == str(tiny_cross_encoder_path) and answer["id"]
    # Cohere v1's document objects; return_documents defaults to false.
    status, answer, _ = await _post(url, {"query": QUERY, "documents": [{"text": d} for d in DOCUMENTS]})
    assert status == 200 and [r["index"] for r in answer["results"]] == order
    assert all("document" not in r for r in answer["results"])


async def test_tei_requests_send_texts_and_get_every_one_ranked(url: str) -> None:
    status, answer, _ = await _post(url, {"query": QUERY, "texts": DOCUMENTS, "return_text": True})
    assert status == 200, answer
    assert sorted(r["index"] for r in answer["results"]) == [0, 1, 2, 3]
    scores = [r["relevance_score"] for r in answer["results"]]
    assert scores == sorted(scores, reverse=True)
    assert all(r["document"]["text"] == DOCUMENTS[r["index"]] for r in answer["results"])


async def test_bad_requests_are_400s_naming_the_parameter(url: str) -> None:
    cases: list[tuple[object, str]] = [
        ({"documents": DOCUMENTS}, "query"),
        ({"query": QUERY}, "texts"),
        ({"query": QUERY, "documents": []}, "documents"),
        ({"query": QUERY, "documents": [1, 2]}, "documents"),
        ({"query": QUERY, "documents": DOCUMENTS, "top_n": 0}, "top_n"),
        ({"query": QUERY, "documents": ["fits", "word " * 600]}, "documents"),
    ]
    for body, param in cases:
        status, answer, _ = await _post(url, body)
        assert (status, answer["error"]["param"]) == (400, param), (body, answer)
    status, answer, _ = await _post(url, {"query": QUERY, "documents": ["fits", "word " * 600]})
    assert answer["error"]["code"] == "context_length_exceeded" and "document 1" in answer["error"]["message"]
    status, answer, _ = await _post(url, {"query": QUERY, "documents": DOCUMENTS, "model": "rerank-v3.5"})
    assert (status, answer["error"]["code"]) == (404, "model_not_found")


async def test_api_keys_guard_rerank_like_every_v1_route(
    reranker: RerankerPool, query_pool: ModelQueryPool, tiny_cross_encoder_path: Path
) -> None:
    async for url in _serve(_settings(tiny_cross_encoder_path, keys=[KEY]), query_pool, reranker):
        body = {"query": QUERY, "documents": DOCUMENTS}
        status, answer, _ = await _post(url, body)
        assert (status, answer["error"]["code"]) == (401, "invalid_api_key")
        status, answer, _ = await _post(url, body, {"Authorization": f"Bearer {KEY}"})
        assert status == 200 and len(answer["results"]) == len(DOCUMENTS)


async def test_full_reranker_queues_answer_429_with_retry_after(
    ray_session: None, query_pool: ModelQueryPool, tiny_cross_encoder_path: Path
) -> None:
    settings = _settings(tiny_cross_encoder_path)
    assert settings.reranker is not None
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests
    busy = await RerankerPool.start(settings.reranker, namespace=NAMESPACE, actor_class=BusyReranker)
    try:
        async for url in _serve(settings, query_pool, busy):
            status, answer, headers = await _post(url, {"query": QUERY, "documents": DOCUMENTS})
            assert (status, answer["error"]["code"]) == (429, "rate_limit_exceeded")
            assert int(headers["Retry-After"]) >= 1
    finally:
        busy.shutdown()


async def test_a_rerank_past_the_deadline_is_a_503_and_without_reranker_a_404(
    query_pool: ModelQueryPool, tiny_cross_encoder_path: Path
) -> None:
    async for url in _serve(
        _settings(tiny_cross_encoder_path, request_timeout_s=0.5), query_pool, SlowReranker()
    ):
        status, answer, headers = await _post(url, {"query": QUERY, "documents": DOCUMENTS})
        assert (status, answer["error"]["code"]) == (503, "timeout") and "Retry-After" in headers
    plain = _settings(tiny_cross_encoder_path).model_copy(update={"reranker": None})
    async for url in _serve(plain, query_pool, None):
        status, answer, _ = await _post(url, {"query": QUERY, "documents": DOCUMENTS})
        assert (status, answer["error"]["code"]) == (404, "no_reranker")
