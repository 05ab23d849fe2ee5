"""Search strategies over a fake sink: direct, funnel re-scoring, per-document results, strategy picks."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, cast

import numpy as np
import pytest

from pipeline.documents import Hit
from pipeline.milvus.sink import MilvusSink
from pipeline.search.replicas import (
    QueryResult,
    ReplicaSearch,
    best_chunk_per_document,
    format_results,
    pick_strategy,
    rescore,
)
from pipeline.search.routing import NO_PROFILE_REASON, Profile, Strategy
from pipeline.settings import Settings
from workers.errors import ConfigError

NATIVE, SMALL = 8, 2


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


class FakeSink:
    """Brute-force cosine over stored full vectors, cut per replica; records what was scanned."""

    def __init__(self, full: dict[str, np.ndarray]) -> None:
        self.full = full
        self.searched: list[tuple[int, int]] = []
        self.fetched: list[tuple[int, set[str]]] = []

    def search(
        self, dim: int, vectors: np.ndarray, top_k: int, output_fields: Collection[str] = ()
    ) -> list[list[Hit]]:
        self.searched.append((dim, top_k))
        pks = sorted(self.full)
        matrix = unit(np.stack([self.full[pk][:dim] for pk in pks]))
        out = []
        for query in vectors:
            scores = matrix @ query
            order = np.argsort(-scores, kind="stable")[:top_k]
            out.append([hit(pks[i], float(scores[i])) for i in order])
        return out

    def fetch(self, dim: int, pks: Collection[str], output_fields: Collection[str] = ()) -> dict[str, Any]:
        self.fetched.append((dim, set(pks)))
        return {
            pk: {"doc_id": pk.split("#")[0], "chunk_index": int(pk.split("#")[1]), "embedding": self.full[pk]}
            | ({"text": f"text of {pk}"} if "text" in output_fields else {})
            for pk in pks
            if pk in self.full
        }


def hit(pk: str, score: float) -> Hit:
    doc, chunk = pk.split("#")
    return Hit(pk=pk, doc_id=doc, chunk_index=int(chunk), text=None, metadata=None, score=score)


def test_rescore_orders_the_shortlist_by_full_cosine_and_drops_unknown_pks() -> None:
    vectors = {
        "a#0": unit(np.array([1.0, 0.0])),
        "b#0": unit(np.array([0.6, 0.8])),
        "c#0": unit(np.array([0.0, 1.0])),
    }
    query = unit(np.array([[0.0, 1.0]]))
    [ranked] = rescore(query, [["a#0", "b#0", "gone#0", "c#0", "b#0"]], vectors, top_k=2)
    assert [pk for pk, _ in ranked] == ["c#0", "b#0"]
    assert ranked[0][1] == pytest.approx(1.0) and ranked[1][1] == pytest.approx(0.8)
    assert rescore(query, [["gone#0"]], vectors, top_k=2) == [[]]


def test_funnel_scans_only_the_small_replica_and_matches_exact_search() -> None:
    rng = np.random.default_rng(0)
    full = {f"d{i}#{c}": unit(rng.normal(size=NATIVE)) for i in range(30) for c in range(2)}
    sink = FakeSink(full)
    searcher = ReplicaSearch(cast(MilvusSink, sink), NATIVE)
    queries = unit(rng.normal(size=(3, NATIVE)))
    vectors = {NATIVE: queries, SMALL: unit(queries[:, :SMALL])}
    # A shortlist of the whole corpus (5 × 12 = 60 chunks) makes the funnel exact.
    funnel = searcher.run(Strategy(SMALL, 12), vectors, top_k=5, output_fields=("text",))
    assert sink.searched == [(SMALL, 60)]  # one scan, of the small replica only
    assert [dim for dim, _ in sink.fetched] == [NATIVE]  # full vectors by primary key
    exact = ReplicaSearch(cast(MilvusSink, FakeSink(full)), NATIVE).run(Strategy(NATIVE), vectors, 5)
    assert [[h.pk for h in hits] for hits in funnel] == [[h.pk for h in hits] for hits in exact]
    assert funnel[0][0].text == f"text of {funnel[0][0].pk}"
    assert funnel[0][0].score == pytest.approx(exact[0][0].score, abs=1e-5)


def test_a_direct_search_goes_to_its_replica_alone() -> None:
    sink = FakeSink({"a#0": unit(np.ones(NATIVE))})
    hits = ReplicaSearch(cast(MilvusSink, sink), NATIVE).run(
        Strategy(SMALL), {SMALL: unit(np.ones((1, SMALL)))}, top_k=3
    )
    assert [[h.pk for h in row] for row in hits] == [["a#0"]]
    assert sink.searched == [(SMALL, 3)] and sink.fetched == []


def test_best_chunk_per_document_keeps_order() -> None:
    hits = [hit(pk, 1.0) for pk in ["a#2", "b#0", "a#0", "c#1", "b#3", "d#0"]]
    assert [h.pk for h in best_chunk_per_document(hits, 3)] == ["a#2", "b#0", "c#1"]


def test_pick_strategy() -> None:
    settings = Settings()
    dims = (384, 128, 64)
    assert pick_strategy(settings, dims).strategy == Strategy(384)
    assert pick_strategy(settings, dims, dim=128).strategy == Strategy(128)
    assert pick_strategy(settings, dims, funnel_factor=10).strategy == Strategy(64, 10)  # from the smallest
    measured = Profile.from_rows([{"dim": 128, "funnel_factor": None, "recall": 0.91, "p50_ms": 1}], "t")
    routed = pick_strategy(settings, dims, recall_target=0.9, profile=measured)
    assert routed.strategy == Strategy(128) and routed.expected is not None and routed.expected.recall == 0.91
    with pytest.raises(ConfigError, match="no replica of dimension 100"):
        pick_strategy(settings, dims, dim=100)
    with pytest.raises(ConfigError, match="funnel factor"):
        pick_strategy(settings, dims, dim=64, funnel_factor=0)


def test_without_search_profile_path_a_target_gets_the_native_replica_and_the_reason() -> None:
    settings = Settings()
    assert settings.search.profile_path is None
    for target in ({"recall_target": 0.9}, {"latency_budget_ms": 5.0}):
        choice = pick_strategy(settings, (384, 128, 64), **target)  # type: ignore[arg-type]
        assert choice.strategy == Strategy(384) and choice.expected is None
        assert choice.reason == NO_PROFILE_REASON


def test_the_printed_results_say_why_routing_picked_the_strategy() -> None:
    routed = QueryResult("q", 384, [hit("a#0", 0.5)], "replica 384d", NO_PROFILE_REASON)
    lines = format_results([routed, QueryResult("q", 128, [], "replica 128d")]).splitlines()
    assert lines == [
        'query: "q"  (replica 384d)',
        f"  routing: {NO_PROFILE_REASON}",
        "  1. 0.500  a#0  ",
        'query: "q"  (replica 128d)',
        "  no hits",
    ]


def test_the_query_task_is_configurable_per_collection() -> None:
    settings = Settings.model_validate(
        {"search": {"default_task": "find things", "collection_tasks": {"manpages": "find man pages"}}}
    )
    assert settings.search.task_for("manpages") == "find man pages"
    assert settings.search.task_for("documents") == "find things"
