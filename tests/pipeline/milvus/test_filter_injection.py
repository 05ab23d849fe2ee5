"""Filters applied inside real Milvus (Milvus Lite and Milvus 2.3.5 standalone): hostile values —
quotes, backslashes, line breaks, Unicode, ``" or 1==1 or "`` — in document ids and metadata match
only themselves, through direct and funnel search, and the funnel's rescoring fetch re-applies the
filter on the native replica."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, cast

import numpy as np
import pytest

from pipeline.documents import ChunkRow, UpsertDocument
from pipeline.milvus.filters import compile_filter
from pipeline.milvus.sink import MilvusSink
from pipeline.search.replicas import ReplicaSearch
from pipeline.search.routing import Strategy
from pipeline.settings import MilvusSettings

NATIVE, SMALL, CHUNKS = 16, 4, 2
HOSTILE = [
    '" or 1==1 or "',
    'a\\" or doc_id != "',
    "back\\slash\\",
    'quote"inside',
    "line\nbreak\rreturn",
    "ünï€ødé 漢字 🙂",
    "it's'",
    "trailing\\",
]
PLAIN = ["alpha", "beta", "gamma"]
INJECTIONS = ['x" or doc_id != "', '" || "" == "', "\\", 'alpha" or "1"=="1', "alpha\n"]


def metadata(i: int, doc: str) -> dict[str, Any]:
    return {
        "tag": doc,
        "year": 2000 + i,
        "score": i / 4,
        "even": i % 2 == 0,
        "tags": [doc, "all"],
        "n": {"k": i},
    }


@pytest.fixture(scope="module")
def sink(milvus_uri: str) -> Iterator[MilvusSink]:
    settings = MilvusSettings(
        uri=milvus_uri, collection_prefix=f"filt_{uuid.uuid4().hex[:8]}", index_type="FLAT"
    )
    sink = MilvusSink(settings, (NATIVE, SMALL))
    sink.ensure_collections()
    rng = np.random.default_rng(7)
    writes = []
    for i, doc in enumerate(PLAIN + HOSTILE):
        full = rng.standard_normal((CHUNKS, NATIVE)).astype(np.float32)
        vectors = {
            d: full[:, :d] / np.linalg.norm(full[:, :d], axis=1, keepdims=True) for d in (NATIVE, SMALL)
        }
        chunks = [ChunkRow(doc, c, f"{doc} chunk {c}", metadata(i, doc)) for c in range(CHUNKS)]
        writes.append(UpsertDocument(doc, chunks, vectors))
    assert not sink.write(writes).rejected
    yield sink
    sink.close()


def found(sink: MilvusSink, spec: dict[str, Any]) -> dict[str, set[str]]:
    """The doc ids each strategy returns for ``spec`` (every row asked for: top_k over the corpus)."""
    where = compile_filter(spec)
    queries = np.random.default_rng(1).standard_normal((2, NATIVE)).astype(np.float32)
    vectors = {
        d: queries[:, :d] / np.linalg.norm(queries[:, :d], axis=1, keepdims=True) for d in (NATIVE, SMALL)
    }
    search = ReplicaSearch(sink, NATIVE)
    top_k = (len(PLAIN) + len(HOSTILE)) * CHUNKS
    out = {}
    for strategy in (Strategy(NATIVE), Strategy(SMALL), Strategy(SMALL, 2)):
        hits = search.run(strategy, vectors, top_k, where=where)
        for per_query in hits:
            assert all(h.metadata is not None and h.metadata["tag"] == h.doc_id for h in per_query)
        assert {h.doc_id for h in hits[0]} == {h.doc_id for h in hits[1]}
        out[strategy.name] = {h.doc_id for h in hits[0]}
    return out


def same_for_every_strategy(sink: MilvusSink, spec: dict[str, Any]) -> set[str]:
    results = found(sink, spec)
    assert len(set(map(frozenset, results.values()))) == 1, results
    return next(iter(results.values()))


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_value_matches_only_itself(sink: MilvusSink, value: str) -> None:
    assert same_for_every_strategy(sink, {"doc_id": value}) == {value}
    assert same_for_every_strategy(sink, {"metadata.tag": value}) == {value}
    assert same_for_every_strategy(sink, {"doc_id": {"in": [value, "beta"]}}) == {value, "beta"}
    assert same_for_every_strategy(sink, {"metadata.tag": {"in": [value]}}) == {value}
    assert same_for_every_strategy(sink, {"metadata.tags": {"contains": value}}) == {value}
    everyone = set(PLAIN + HOSTILE)
    assert same_for_every_strategy(sink, {"doc_id": {"ne": value}}) == everyone - {value}
    assert same_for_every_strategy(sink, {"metadata.tag": {"nin": [value]}}) == everyone - {value}


@pytest.mark.parametrize("value", INJECTIONS)
def test_an_injected_expression_returns_no_rows(sink: MilvusSink, value: str) -> None:
    for spec in ({"doc_id": value}, {"metadata.tag": value}, {"doc_id": {"in": [value]}}):
        assert same_for_every_strategy(sink, spec) == set(), spec


def test_ranges_bools_nesting_and_logic(sink: MilvusSink) -> None:
    docs = PLAIN + HOSTILE
    assert same_for_every_strategy(sink, {"metadata.year": {"gte": 2003, "lt": 2005}}) == set(docs[3:5])
    assert same_for_every_strategy(sink, {"metadata.score": {"gt": 2.2e0, "lte": 2.5}}) == set(docs[9:11])
    assert same_for_every_strategy(sink, {"metadata.even": True, "metadata.n.k": {"lt": 4}}) == set(
        docs[0:4:2]
    )
    spec = {"or": [{"doc_id": "alpha"}, {"not": {"metadata.year": {"lt": 2010}}}]}
    assert same_for_every_strategy(sink, spec) == {"alpha", *docs[10:]}


def test_the_rescoring_fetch_applies_the_filter_on_the_native_replica(sink: MilvusSink) -> None:
    pks = {f"{doc}#{c}" for doc in PLAIN + HOSTILE for c in range(CHUNKS)}
    rows = sink.fetch(NATIVE, pks, ("metadata",), compile_filter({"metadata.tag": HOSTILE[0]}))
    assert sorted(rows) == [f"{HOSTILE[0]}#{c}" for c in range(CHUNKS)]
    assert sink.fetch(NATIVE, pks, (), compile_filter({"doc_id": INJECTIONS[0]})) == {}


class RewritingSink:
    """The real sink; right after the shortlist search, one document is rewritten out of the filter
    (a write landing between a funnel's shortlist and its rescoring fetch)."""

    def __init__(self, sink: MilvusSink, rewrite: UpsertDocument) -> None:
        self.sink, self.rewrite = sink, rewrite

    def search(self, *args: Any, **kwargs: Any) -> Any:
        hits = self.sink.search(*args, **kwargs)
        assert not self.sink.write([self.rewrite]).rejected
        return hits

    def fetch(self, *args: Any, **kwargs: Any) -> Any:
        return self.sink.fetch(*args, **kwargs)


def test_a_row_that_left_the_filter_after_the_shortlist_is_not_returned(milvus_uri: str) -> None:
    settings = MilvusSettings(
        uri=milvus_uri, collection_prefix=f"filt_{uuid.uuid4().hex[:8]}", index_type="FLAT"
    )
    sink = MilvusSink(settings, (NATIVE, SMALL))
    sink.ensure_collections()
    unit = np.ones((1, NATIVE), dtype=np.float32) / np.sqrt(NATIVE)
    vectors = {d: unit[:, :d] / np.linalg.norm(unit[:, :d]) for d in (NATIVE, SMALL)}

    def document(doc: str, tag: str) -> UpsertDocument:
        return UpsertDocument(doc, [ChunkRow(doc, 0, doc, {"tag": tag})], vectors)

    try:
        assert not sink.write([document("moved", "keep"), document("stays", "keep")]).rejected
        search = ReplicaSearch(cast(MilvusSink, RewritingSink(sink, document("moved", "gone"))), NATIVE)
        [hits] = search.run(Strategy(SMALL, 2), vectors, 2, where=compile_filter({"metadata.tag": "keep"}))
        assert [(h.doc_id, h.metadata) for h in hits] == [("stays", {"tag": "keep"})]
    finally:
        sink.close()
