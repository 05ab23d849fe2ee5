"""POST /v1/search with a filter, driven by a real HTTP client against Milvus Lite: direct and funnel
searches return only matching chunks, an injected value matches nothing, bad filters are 400s."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from helpers.app_server import serving
from helpers.fakes import ModelQueryPool

from pipeline.documents import ChunkRow, UpsertDocument
from pipeline.milvus.sink import MilvusSink
from pipeline.search.api import Api
from pipeline.settings import MilvusSettings, Settings
from workers.model.embedding_model import EmbeddingModel
from workers.settings import ModelSettings

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
DIMS = (384, 64)
HOSTILE = '" or 1==1 or "\\\n'
DOCS = {  # doc id: (text, metadata)
    "tar-en": ("tar stores many files in one archive and extracts them again.", {"lang": "en", "year": 2019}),
    "tar-de": (
        "tar speichert viele Dateien in einem Archiv und entpackt sie wieder.",
        {"lang": "de", "year": 2021},
    ),
    "zip-de": ("zip packt Dateien in ein komprimiertes Archiv.", {"lang": "de", "year": 2023}),
    HOSTILE: (
        "ssh logs into a remote machine over an encrypted connection.",
        {"lang": HOSTILE, "year": 2020},
    ),
}


@pytest.fixture(scope="module")
def filled(minilm_path: Any, milvus_lite_uri: str) -> Iterator[tuple[Settings, EmbeddingModel, MilvusSink]]:
    """MiniLM, and replicas on Milvus Lite holding DOCS."""
    model = EmbeddingModel.load(ModelSettings(name_or_path=MODEL), device="cpu")
    milvus = MilvusSettings(uri=milvus_lite_uri, collection_prefix="api_filters", index_type="FLAT")
    settings = Settings.model_validate({"replicas": {"dims": [64]}, "milvus": milvus.model_dump()})
    sink = MilvusSink(milvus, DIMS)
    sink.ensure_collections()
    vectors = model.embed([text for text, _ in DOCS.values()], list(DIMS))
    writes = [
        UpsertDocument(doc, [ChunkRow(doc, 0, text, meta)], {d: vectors[d][i : i + 1] for d in DIMS})
        for i, (doc, (text, meta)) in enumerate(DOCS.items())
    ]
    assert not sink.write(writes).rejected
    yield settings, model, sink
    sink.close()


@pytest.fixture
async def api(filled: tuple[Settings, EmbeddingModel, MilvusSink]) -> AsyncIterator[str]:
    settings, model, sink = filled
    async with serving(Api(settings, ModelQueryPool(model), model.tokenizer, sink).app()) as url:
        yield url


async def post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as http, http.post(f"{url}/v1/search", json=body) as response:
        return response.status, await response.json()


@pytest.mark.parametrize("extra", [{}, {"dim": 64, "funnel_factor": 4}], ids=["direct", "funnel"])
@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"metadata.lang": "de"}, ["tar-de", "zip-de"]),
        ({"metadata.lang": "de", "metadata.year": {"lt": 2022}}, ["tar-de"]),
        ({"doc_id": {"in": ["tar-en", HOSTILE]}}, ["tar-en", HOSTILE]),
        ({"or": [{"doc_id": HOSTILE}, {"metadata.lang": HOSTILE}]}, [HOSTILE]),
        ({"not": {"metadata.lang": {"in": ["de", "en"]}}}, [HOSTILE]),
        ({"doc_id": '" or doc_id != "'}, []),
        ({"metadata.lang": 'de" or "1" == "1'}, []),
    ],
)
async def test_search_returns_only_what_the_filter_matches(
    api: str, extra: dict[str, Any], where: dict[str, Any], expected: list[str]
) -> None:
    status, body = await post(
        api, {"query": "pack files into an archive", "top_k": 4, "filter": where, **extra}
    )
    assert status == 200, body
    (result,) = body["data"]
    assert result["strategy"] == ("funnel 64d×4" if extra else "replica 384d")
    assert sorted(hit["doc_id"] for hit in result["hits"]) == sorted(expected)
    assert all(DOCS[hit["doc_id"]][1] == hit["metadata"] for hit in result["hits"])


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({"metadata.lang": {"regex": ".*"}}, "filter.metadata.lang.regex: unknown operator 'regex'"),
        ({'metadata.lang"] or 1==1 or metadata["x': "de"}, "must match [A-Za-z_][A-Za-z0-9_]*"),
        ({"text": "tar"}, "filter.text: unknown field 'text'"),
        ("doc_id == 'a'", "filter: a filter must be a non-empty JSON object"),
        ({"doc_id": None}, "null is not supported"),
    ],
)
async def test_a_bad_filter_is_a_400_naming_it(api: str, where: Any, message: str) -> None:
    status, body = await post(api, {"query": "x", "filter": where})
    assert status == 400, body
    assert body["error"]["param"] == "filter" and body["error"]["type"] == "invalid_request_error"
    assert message in body["error"]["message"]
