"""`search --rerank N` as the verb runs it: the session's Milvus Lite holds a small corpus, the query is
embedded by a private embedder actor and the shortlist reranked by a reranker actor (the tiny
cross-encoder) on the session's real Ray; the printed hits are the vector top N re-ordered by the
reranker's scores, the top-k of them, each showing both scores."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pytest
from helpers.settings import private_settings

from pipeline.cli import _parser
from pipeline.documents import ChunkRow, UpsertDocument
from pipeline.milvus.connection import MilvusConnection
from pipeline.milvus.model_stamp import check_stamps, stamp_of
from pipeline.milvus.sink import MilvusSink
from pipeline.settings import Settings
from pipeline.tools.search_cli import search_verb
from workers.errors import ConfigError
from workers.model.embedding_model import EmbeddingModel
from workers.model.reranker_model import RerankerModel
from workers.reranker_settings import RerankerSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

QUERY = "how do volcanoes form"
CORPUS = {
    "volcano": "Volcanoes form where magma from the mantle rises through cracks in the crust.",
    "plates": "Plate tectonics moves the crust; many volcanoes sit on plate boundaries.",
    "bread": "Sourdough bread rises because wild yeast ferments the dough.",
    "tides": "The tides follow the moon and the sun.",
    "lava": "Lava is molten rock that reached the surface of a volcano.",
    "chess": "Chess openings fight for the centre of the board.",
}
LINE = re.compile(r"^\s+(\d+)\. rerank (\d\.\d{3})  vector (-?\d\.\d{3})  (\S+)#0  ", re.MULTILINE)


def _settings(milvus_lite_uri: str, cross_encoder: Path) -> Settings:
    reranker = RerankerSettings(name_or_path=str(cross_encoder), cpus_per_actor=0.5)
    return private_settings(
        "127.0.0.1:1", milvus_lite_uri, name="rerank", pool={"cpus_per_actor": 1.0},
        dims=(64,), ray_namespace=True, reranker=reranker,
    )  # fmt: skip


def _fill(settings: Settings, model: EmbeddingModel) -> dict[str, np.ndarray]:
    """The corpus in the replicas (stamped by the model that embeds it); returns the native vectors."""
    dims = settings.replicas.replica_dims(model.info().native_dim)
    vectors = model.embed(list(CORPUS.values()), dims)
    sink = MilvusSink(settings.milvus, dims)
    try:
        sink.ensure_collections()
        sink.write([
            UpsertDocument(doc, [ChunkRow(doc, 0, text, {})], {d: vectors[d][i : i + 1] for d in dims})
            for i, (doc, text) in enumerate(CORPUS.items())
        ])  # fmt: skip
        sink.flush()
    finally:
        sink.close()
    connection = MilvusConnection(settings.milvus)
    try:
        names = {d: f"{settings.milvus.collection_prefix}_{d}" for d in dims}
        check_stamps(connection, names, stamp_of(model.info(), settings.model), adopt=True, fix="")
    finally:
        connection.close()
    native = max(dims)
    return {doc: vectors[native][i] for i, doc in enumerate(CORPUS)}


async def test_search_rerank_reorders_the_vector_top_n_by_the_rerankers_scores(
    milvus_lite_uri: str, ray_session: None, tiny_cross_encoder_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _settings(milvus_lite_uri, tiny_cross_encoder_path)
    embedder = EmbeddingModel.load(settings.model, device="cpu")
    vectors = _fill(settings, embedder)
    # What the verb must print: the vector top 4, re-ordered by the reranker, the best 2.
    query = embedder.embed([QUERY], (embedder.info().native_dim,))[embedder.info().native_dim][0]
    by_vector = sorted(CORPUS, key=lambda doc: -float(vectors[doc] @ query))[:4]
    assert settings.reranker is not None
    reranker = RerankerModel.load(settings.reranker, "cpu")
    rerank = dict(zip(by_vector, reranker.score(QUERY, [CORPUS[d] for d in by_vector]), strict=True))
    expected = sorted(by_vector, key=lambda doc: -rerank[doc])[:2]
    assert expected != by_vector[:2]  # the reranker changes the order: the output below shows whose

    args = _parser().parse_args(["search", QUERY, "--rerank", "4", "--top-k", "2"])
    assert await search_verb(settings, args) == 0
    printed = capsys.readouterr().out
    assert "+ rerank" in printed
    hits = LINE.findall(printed)
    assert [doc for _, _, _, doc in hits] == expected, printed
    for _, shown, vector, doc in hits:
        assert float(shown) == pytest.approx(float(rerank[doc]), abs=1e-3)
        assert float(vector) == pytest.approx(float(vectors[doc] @ query), abs=2e-3)


async def test_search_rerank_without_a_reranker_is_refused_before_anything_starts(
    milvus_lite_uri: str, tiny_cross_encoder_path: Path
) -> None:
    settings = _settings(milvus_lite_uri, tiny_cross_encoder_path).model_copy(update={"reranker": None})
    args: argparse.Namespace = _parser().parse_args(["search", QUERY, "--rerank", "4"])
    with pytest.raises(ConfigError, match="no reranker is configured"):
        await search_verb(settings, args)
