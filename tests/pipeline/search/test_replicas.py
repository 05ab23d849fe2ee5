"""Search strategies over a fake sink: direct, funnel re-scoring, per-document results, strategy picks."""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import Any, cast

import numpy as np
import pytest

from pipeline.documents import Hit
from pipeline.milvus.sink import MAX_SEARCH_LIMIT, MilvusSink
from pipeline.search.api import DEFAULT_TOP_K
from pipeline.search.replicas import (
    QueryResult,
    ReplicaSearch,
    best_chunk_per_document,
    check_search_size,
    format_results,
    pick_strategy,
    rescore,
    search,
)
from pipeline.search.routing import NO_PROFILE_REASON, Choice, Profile, Strategy
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
        self,
        dim: int,
        vectors: np.ndarray,
        top_k: int,
        output_fields: Collection[str] = (),
        where: Any = None,
        tenant: str | None = None,
    ) -> list[list[Hit]]:
        # Filters and tenants are proven on real Milvus (test_filter_injection.py, test_tenant_isolation.py).
        assert where is None and tenant is None
        self.searched.append((dim, top_k))
        pks = sorted(self.full)
        matrix = unit(np.stack([self.full[pk][:dim] for pk in pks]))
        out = []
        for query in vectors:
            scores = matrix @ query
            order = np.argsort(-scores, kind="stable")[:top_k]
            out.append([hit(pks[i], float(scores[i])) for i in order])
        return out

    def fetch(
        self,
        dim: int,
        pks: Collection[str],
        output_fields: Collection[str] = (),
        where: Any = None,
        tenant: str | None = None,
    ) -> dict[str, Any]:
        assert where is None and tenant is None
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


def test_requests_over_the_milvus_search_limit_are_refused_naming_it() -> None:
    assert MAX_SEARCH_LIMIT == 16384
    check_search_size(16384)
    check_search_size(4096, per_document=True)
    check_search_size(16, funnel_factor=1024)
    check_search_size(4, funnel_factor=1024, per_document=True)
    for args, product in (
        ((16385,), "top_k 16385 = 16385"),
        ((4097, None, True), "top_k 4097 × 4 (per-document over-fetch) = 16388"),
        ((1000, 17), "top_k 1000 × funnel factor 17 = 17000"),
        ((5, 1000, True), "top_k 5 × 4 (per-document over-fetch) × funnel factor 1000 = 20000"),
    ):
        with pytest.raises(
            ValueError, match=re.escape(f"{product} hits per query, over Milvus' limit of 16384")
        ):
            check_search_size(*args)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="top_k must be at least 1"):
        check_search_size(0)


def test_what_the_configured_funnel_factor_allows_with_the_default_top_k() -> None:
    """search.funnel_factor goes up to 1000: with the API's default top_k (10) and the CLI's (5) a
    funnel search fits Milvus' limit; per document (× 4) it fits up to factors 409 and 819."""
    largest = Settings.model_validate({"search": {"funnel_factor": 1000}}).search.funnel_factor
    with pytest.raises(ValueError, match="funnel_factor"):
        Settings.model_validate({"search": {"funnel_factor": largest + 1}})
    for default_top_k, per_document_up_to in ((DEFAULT_TOP_K, 409), (5, 819)):
        check_search_size(default_top_k, largest)
        check_search_size(default_top_k, per_document_up_to, per_document=True)
        with pytest.raises(ValueError, match="over Milvus' limit of 16384"):
            check_search_size(default_top_k, per_document_up_to + 1, per_document=True)


def test_routing_leaves_out_strategies_over_the_milvus_limit() -> None:
    settings = Settings()
    rows = [
        {"dim": 64, "funnel_factor": 50, "recall": 0.97, "p50_ms": 1},
        {"dim": 128, "funnel_factor": None, "recall": 0.95, "p50_ms": 2},
        {"dim": 384, "funnel_factor": None, "recall": 1.0, "p50_ms": 5},
    ]
    measured = Profile.from_rows(rows, "t")

    def pick(top_k: int, per_document: bool = False) -> Choice:
        dims = (384, 128, 64)
        return pick_strategy(
            settings, dims, recall_target=0.9, profile=measured, top_k=top_k, per_document=per_document
        )

    assert pick(10).strategy == Strategy(64, 50)  # the fastest meeting the target
    wide = pick(1000)
    assert wide.strategy == Strategy(128)  # 1000 × 50 is over the limit: the fastest that fits
    assert "limit of 16384 hits for top_k 1000 left out" in wide.reason
    assert len(measured.entries) == 3  # the caller's profile (its latencies adapt) is left whole
    with pytest.raises(ValueError, match=r"top_k 5000 × 4 .* over Milvus' limit of 16384"):
        pick(5000, per_document=True)
    with pytest.raises(ValueError, match=r"top_k 20 × funnel factor 1000 .* over Milvus' limit"):
        pick_strategy(settings, (384, 128, 64), funnel_factor=1000, top_k=20)


async def test_search_refuses_before_embedding_or_reaching_milvus() -> None:
    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"{name} was used")

    class Sink(Untouchable):
        dims = (384, 64)

    pool, sink = cast(Any, Untouchable()), cast(MilvusSink, Sink())
    with pytest.raises(ValueError, match="top_k 400 × funnel factor 50 = 20000 hits per query, over"):
        await search(Settings(), pool, sink, ["q"], top_k=400, funnel_factor=50)


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
