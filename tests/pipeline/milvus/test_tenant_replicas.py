"""Tenants on real Milvus (Milvus Lite and Milvus 2.3.5 standalone): the ``tenant`` partition key is
filled from each document's metadata, every search and rescoring fetch is confined to the tenant it
names — a filter, another tenant's doc ids or a hostile tenant string cannot widen it — a document that
moves to another tenant is found under its new tenant only (Milvus 2.3.5 files upserted rows under the
wrong partition: milvus-io/milvus#30607), and a collection whose tenants disagree with the settings is
refused before anything is written."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from pipeline.documents import ChunkRow, UpsertDocument
from pipeline.milvus.filters import compile_filter
from pipeline.milvus.model_stamp import ModelStamp
from pipeline.milvus.schema import collection_properties, count_rows
from pipeline.milvus.sink import MilvusSink
from pipeline.milvus.tenants import (
    TENANT_FIELD,
    TENANT_PROPERTY,
    TenantRequired,
    check_tenant,
    prunes_by_key,
    scoped,
    tenant_condition,
)
from pipeline.runtime.versions import fill_settings, prepare_replicas, readable_replicas
from pipeline.search.replicas import ReplicaSearch
from pipeline.search.routing import Strategy
from pipeline.settings import MilvusSettings, Settings
from workers.errors import ConfigError

NATIVE, SMALL, CHUNKS = 16, 4, 2
HOSTILE = '" or tenant != "'  # a tenant that would match every other tenant if it were spliced raw
TENANTS = {"acme": ["a1", "a2", "a3"], "globex": ["g1", "g2", "g3"], HOSTILE: ["h1"]}
EVERY_ROW = sum(map(len, TENANTS.values())) * CHUNKS
STRATEGIES = (Strategy(NATIVE), Strategy(SMALL), Strategy(SMALL, 3))


def write(doc: str, tenant: str, seed: int) -> UpsertDocument:
    full = np.random.default_rng(seed).standard_normal((CHUNKS, NATIVE)).astype(np.float32)
    vectors = {d: full[:, :d] / np.linalg.norm(full[:, :d], axis=1, keepdims=True) for d in (NATIVE, SMALL)}
    meta = {"org": tenant, "lang": "en"}
    return UpsertDocument(doc, [ChunkRow(doc, c, f"{doc} chunk {c}", meta) for c in range(CHUNKS)], vectors)


def settings(uri: str, prefix: str, tenant_field: str | None = "org") -> MilvusSettings:
    return MilvusSettings(uri=uri, collection_prefix=prefix, index_type="FLAT", tenant_field=tenant_field)


@pytest.fixture(scope="module")
def sink(milvus_uri: str) -> Iterator[MilvusSink]:
    sink = MilvusSink(settings(milvus_uri, f"ten_{uuid.uuid4().hex[:8]}"), (NATIVE, SMALL))
    sink.ensure_collections()
    writes = [write(doc, t, i) for i, (t, docs) in enumerate(TENANTS.items()) for doc in docs]
    assert not sink.write(writes).rejected
    yield sink
    sink.close()


def found(sink: MilvusSink, tenant: str | None, spec: dict[str, Any] | None = None) -> dict[str, set[str]]:
    """The doc ids each strategy returns as ``tenant`` with filter ``spec``, every row asked for."""
    queries = np.random.default_rng(1).standard_normal((2, NATIVE)).astype(np.float32)
    vectors = {
        d: queries[:, :d] / np.linalg.norm(queries[:, :d], axis=1, keepdims=True) for d in (NATIVE, SMALL)
    }
    where = compile_filter(spec) if spec else None
    search = ReplicaSearch(sink, NATIVE)
    out: dict[str, set[str]] = {}
    for strategy in STRATEGIES:
        hits = search.run(strategy, vectors, EVERY_ROW, where=where, tenant=tenant)
        out[strategy.name] = {h.doc_id for per_query in hits for h in per_query}
    return out


def test_rows_carry_their_tenant_in_a_partition_key(sink: MilvusSink) -> None:
    name = sink.collection_name(SMALL)
    info = sink._milvus.call("describing", "describe_collection", name)
    field = next(f for f in info["fields"] if f["name"] == TENANT_FIELD)
    assert field.get("is_partition_key") and info["properties"][TENANT_PROPERTY] == "org"
    rows = sink._milvus.call(
        "reading", "query", name, filter='pk like "%"', output_fields=["doc_id", TENANT_FIELD]
    )
    assert {(r["doc_id"], r[TENANT_FIELD]) for r in rows} == {(d, t) for t, ds in TENANTS.items() for d in ds}


@pytest.mark.parametrize("tenant", list(TENANTS))
def test_each_tenant_sees_exactly_its_own_documents_by_every_strategy(sink: MilvusSink, tenant: str) -> None:
    assert found(sink, tenant) == {s.name: set(TENANTS[tenant]) for s in STRATEGIES}


@pytest.mark.parametrize(
    "spec",
    [
        {"metadata.org": "globex"},
        {"doc_id": {"in": TENANTS["globex"]}},
        {"or": [{"metadata.org": "globex"}, {"doc_id": {"in": TENANTS["globex"]}}]},
        {"metadata.org": {"ne": "acme"}},
        {"not": {"metadata.org": "acme"}},
    ],
    ids=["their-tenant", "their-ids", "or-widening", "ne-mine", "not-mine"],
)
def test_a_filter_cannot_reach_another_tenant(sink: MilvusSink, spec: dict[str, Any]) -> None:
    assert found(sink, "acme", spec) == {s.name: set() for s in STRATEGIES}


def test_a_filter_narrows_within_the_tenant(sink: MilvusSink) -> None:
    assert found(sink, "acme", {"doc_id": {"in": ["a2", "g2"]}}) == {s.name: {"a2"} for s in STRATEGIES}


@pytest.mark.parametrize("tenant", ['acme" or tenant != "', '" or "1" == "1', "acme\n", "ACME", "acm"])
def test_a_hostile_or_near_tenant_matches_nothing_but_itself(sink: MilvusSink, tenant: str) -> None:
    assert found(sink, tenant) == {s.name: set() for s in STRATEGIES}


def test_every_read_needs_a_tenant(sink: MilvusSink) -> None:
    query = np.ones((1, SMALL), dtype=np.float32) / 2
    with pytest.raises(TenantRequired, match="must name its tenant"):
        sink.search(SMALL, query, 3)
    with pytest.raises(TenantRequired):
        sink.fetch(NATIVE, ["a1#0"])
    assert set(sink.fetch(NATIVE, ["a1#0", "g1#0"], tenant="globex")) == {"g1#0"}


def test_a_document_that_changes_tenant_is_found_under_its_new_tenant_only(milvus_uri: str) -> None:
    # Upserts on Milvus 2.3.5 route rows by another field than the partition key (milvus#30607): an
    # equality on the key would search the wrong partition and miss the moved document.
    sink = MilvusSink(settings(milvus_uri, f"move_{uuid.uuid4().hex[:8]}"), (NATIVE, SMALL))
    try:
        sink.ensure_collections()
        assert not sink.write(
            [write("m", "acme", 1), write("x", "acme", 2), write("y", "globex", 3)]
        ).rejected
        assert not sink.write([write("m", "globex", 1)]).rejected
        expected = {"acme": {"x"}, "globex": {"m", "y"}}
        for tenant, docs in expected.items():
            assert found(sink, tenant) == {s.name: docs for s in STRATEGIES}, tenant
    finally:
        sink.close()


def test_a_document_without_a_tenant_is_refused_alone(milvus_uri: str) -> None:
    sink = MilvusSink(settings(milvus_uri, f"none_{uuid.uuid4().hex[:8]}"), (NATIVE, SMALL))
    try:
        sink.ensure_collections()
        bare = write("bare", "x", 4)
        bare = UpsertDocument(
            "bare", [ChunkRow("bare", c, "t", {"lang": "en"}) for c in range(CHUNKS)], bare.vectors
        )
        result = sink.write([write("ok", "acme", 5), bare])
        assert set(result.rejected) == {1} and "no 'org'" in str(result.rejected[1])
        assert result.documents == 1 and sink.count(NATIVE) == CHUNKS
    finally:
        sink.close()


@pytest.mark.parametrize(
    ("made_with", "now", "message"),
    [
        (None, "org", "made without tenants, but milvus.tenant_field is 'org'"),
        ("org", None, "made with tenants (metadata key 'org'), but milvus.tenant_field is unset"),
        ("org", "team", "tenants come from metadata key 'org', but milvus.tenant_field is 'team'"),
    ],
    ids=["on-after-off", "off-after-on", "other-key"],
)
def test_a_collection_made_with_other_tenants_is_refused_before_anything_is_written(
    milvus_uri: str, made_with: str | None, now: str | None, message: str
) -> None:
    prefix = f"mism_{uuid.uuid4().hex[:8]}"
    first = MilvusSink(settings(milvus_uri, prefix, made_with), (NATIVE, SMALL))
    try:
        first.ensure_collections()
        assert not first.write([write("kept", made_with or "x", 6)]).rejected
    finally:
        first.close()
    second = MilvusSink(settings(milvus_uri, prefix, now), (NATIVE, SMALL))
    try:
        with pytest.raises(ConfigError, match="does not match the tenant settings") as refused:
            second.ensure_collections()
        assert message in str(refused.value)
        assert "milvus.collection_prefix" in str(refused.value) or "Set milvus.tenant_field" in str(
            refused.value
        )
        assert (
            count_rows(first._milvus, first.collection_name(NATIVE)) == CHUNKS
        )  # nothing written or dropped
    finally:
        second.close()


@pytest.mark.parametrize(
    ("version", "prunes"),
    [("milvus_lite-3.2.2", True), ("v2.3.5-lite", False), ("v2.3.21", False), ("v2.4.0", True),
     ("2.5.4", True), ("v3.0.0", True), ("", False), ("nightly", False)],
)  # fmt: skip
def test_only_servers_that_route_upserts_by_the_key_get_the_pruned_equality(
    version: str, prunes: bool
) -> None:
    assert prunes_by_key(version) is prunes
    condition = tenant_condition('a"b', prunes=prunes)
    assert condition == ('tenant == "a\\"b"' if prunes else 'tenant >= "a\\"b" and tenant <= "a\\"b"')


def test_a_search_names_a_tenant_exactly_when_the_deployment_has_tenants() -> None:
    assert check_tenant("org", "acme") == "acme" and check_tenant(None, None) is None
    with pytest.raises(TenantRequired):
        check_tenant("org", None)
    for bad in ("", 5, ["acme"]):
        with pytest.raises(ValueError, match="non-empty string"):
            check_tenant("org", bad)
    with pytest.raises(ValueError, match="has no tenants"):
        check_tenant(None, "acme")
    assert (
        scoped("c", None) == "c" and scoped(None, "w") == "w" and scoped("c", "a or b") == "(c) and (a or b)"
    )


def test_a_new_version_gets_tenants_and_the_model_stamp(milvus_uri: str) -> None:
    # `run --into-version 2` creates its replicas through prepare_replicas: stamped and with tenants.
    base = Settings.model_validate(
        {"milvus": settings(milvus_uri, f"ver_{uuid.uuid4().hex[:8]}").model_dump()}
    )
    target = fill_settings(base, 2)
    stamp = ModelStamp("m", "r", "mean", "matryoshka-cut-then-l2", NATIVE, "{instruction}{text}")
    prepare_replicas(base, target, stamp, (NATIVE, SMALL))
    readable_replicas(base, target, stamp, (NATIVE, SMALL))  # what search and serve check
    sink = MilvusSink(target.milvus, (NATIVE, SMALL))
    try:
        name = sink.collection_name(NATIVE)
        assert name.endswith(f"_v2_{NATIVE}")
        assert ModelStamp.from_properties(collection_properties(sink._milvus, name)) == stamp
        assert collection_properties(sink._milvus, name)[TENANT_PROPERTY] == "org"
        assert not sink.write([write("v", "acme", 9)]).rejected
        assert found(sink, "acme") == {s.name: {"v"} for s in STRATEGIES}
        assert found(sink, "globex") == {s.name: set() for s in STRATEGIES}
    finally:
        sink.close()
