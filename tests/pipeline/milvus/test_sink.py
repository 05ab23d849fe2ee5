"""The Milvus sink against real servers: milvus-lite 3.2 and Milvus 2.3.5 standalone.

``fetch_all`` is compared with an oracle built from the writes: the replicas must hold
exactly the chunks of the last accepted write of every document, vectors included.
"""

from __future__ import annotations

import itertools
import math
import signal
import socket
import subprocess
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pytest
from pymilvus import DataType, MilvusClient

import pipeline.milvus.rows as milvus_rows
from pipeline.documents import ChunkRow, DeleteDocument, DocumentWrite, UpsertDocument
from pipeline.milvus.connection import open_client
from pipeline.milvus.errors import SinkUnavailable
from pipeline.milvus.expr import any_of, in_lists, quote
from pipeline.milvus.sink import MAX_SEARCH_LIMIT, MilvusSink
from pipeline.settings import MilvusSettings
from workers.errors import ConfigError, PoisonInput

DIMS = (16, 8)
NASTY_IDS = [
    'say "hi"',
    "it's",
    "back\\slash",
    "trailing\\",
    "\\",
    '"',
    "a#b#1",
    "line\nbreak",
    "cr\r\nlf",
    "tab\there",
    "nul\x00byte",
    "bell\x07 vt\x0b ff\x0c del\x7f",
    "emoji 😀 𝔘",
    "日本語",
    "\u202ertl",
    "line\u2028separator",
    "\\n not a newline",
    "\\u0041",
    '"] or doc_id != "',
    "x' or '1'=='1",
    "",
    " ",
    "%s {} {0}",
    "\ufeffbom",
    "😀" * 512,  # 2048 UTF-8 bytes, the longest id
]
_counter = itertools.count()

LiteLauncher = Callable[[Path, int], AbstractContextManager[tuple[str, subprocess.Popen[bytes]]]]


class SinkFactory(Protocol):
    def __call__(
        self, dims: Sequence[int] = DIMS, *, prefix: str = "shared", **options: Any
    ) -> MilvusSink: ...


def open_sink(uri: str, dims: Sequence[int] = DIMS, prefix: str = "shared", **options: Any) -> MilvusSink:
    """A sink with its collections ensured; the "shared" replicas are emptied first, so most
    tests do not pay for creating and loading collections (seconds on Milvus 2.3.5)."""
    limits = {k: options.pop(k) for k in ("max_call_rows", "max_call_bytes") if k in options}
    sink = MilvusSink(MilvusSettings(uri=uri, collection_prefix=prefix, **options), dims, **limits)
    try:
        sink.ensure_collections()
        if prefix == "shared":
            empty(uri, [sink.collection_name(d) for d in dims])
    except BaseException:
        sink.close()
        raise
    return sink


@pytest.fixture
def make_sink(milvus_uri: str) -> Iterator[SinkFactory]:
    """:func:`open_sink` on ``milvus_uri``; the sinks are closed afterwards."""
    sinks: list[MilvusSink] = []

    def make(dims: Sequence[int] = DIMS, *, prefix: str = "shared", **options: Any) -> MilvusSink:
        sinks.append(open_sink(milvus_uri, dims, prefix, **options))
        return sinks[-1]

    yield make
    for sink in sinks:
        sink.close()


def empty(uri: str, collections: Sequence[str]) -> None:
    client = open_client(uri)
    try:
        for name in collections:
            client.delete(name, filter="chunk_index >= 0", consistency_level="Strong")
    finally:
        client.close()


def vectors_for(doc_id: str, n: int, version: int = 0, dims: Sequence[int] = DIMS) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(zlib.crc32(f"{doc_id!r}/{version}".encode()))
    out = {}
    for dim in dims:
        v = rng.normal(size=(n, dim)).astype(np.float32)
        out[dim] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def upsert(doc_id: str, n: int, version: int = 0, dims: Sequence[int] = DIMS, **meta: Any) -> UpsertDocument:
    chunks = [
        ChunkRow(doc_id, i, f"v{version} chunk {i} of {doc_id}", {"doc": doc_id, "v": version, **meta})
        for i in range(n)
    ]
    return UpsertDocument(doc_id, chunks, vectors_for(doc_id, n, version, dims))


def expected_rows(documents: Mapping[str, UpsertDocument], dim: int) -> list[dict[str, Any]]:
    rows = [
        {
            "pk": f"{doc.doc_id}#{c.chunk_index}",
            "doc_id": doc.doc_id,
            "chunk_index": c.chunk_index,
            "text": c.text,
            "metadata": c.metadata,
            "embedding": [float(x) for x in doc.vectors[dim][c.chunk_index]],
        }
        for doc in documents.values()
        for c in doc.chunks
    ]
    return sorted(rows, key=lambda r: r["pk"])


def assert_replicas(sink: MilvusSink, documents: Mapping[str, UpsertDocument]) -> None:
    for dim in sink.dims:
        assert sink.fetch_all(dim) == expected_rows(documents, dim), f"replica {dim}"
        assert sink.count(dim) == sum(len(d.chunks) for d in documents.values())


# ------------------------------------------------------------------------- collections


def test_ensure_collections_creates_loads_and_reopens(make_sink: SinkFactory, milvus_uri: str) -> None:
    prefix = f"reopen_{next(_counter)}"
    sink = make_sink(prefix=prefix)
    client = open_client(milvus_uri)
    try:
        for dim in DIMS:
            name = sink.collection_name(dim)
            fields = {f["name"]: f for f in client.describe_collection(name)["fields"]}
            assert fields["pk"]["is_primary"] and fields["pk"]["type"] == DataType.VARCHAR
            assert fields["embedding"]["params"]["dim"] == dim
            index = client.describe_index(name, client.list_indexes(name, "embedding")[0])
            assert (index["index_type"], index["metric_type"]) == ("HNSW", "COSINE")
            client.release_collection(name)
        # A restarted worker finds the collections released: ensure_collections loads them.
        again = make_sink(prefix=prefix)
        assert all(str(client.get_load_state(again.collection_name(d))["state"]) == "Loaded" for d in DIMS)
        assert again.write([upsert("a", 2)]).documents == 1
        assert_replicas(again, {"a": upsert("a", 2)})
    finally:
        client.close()


@pytest.mark.parametrize("mismatch", ["dim", "pk", "metric", "positions"])
def test_mismatching_collection_is_a_config_error(
    make_sink: SinkFactory, milvus_uri: str, mismatch: str
) -> None:
    prefix = f"mismatch_{mismatch}_{next(_counter)}"
    client = open_client(milvus_uri)
    try:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        if mismatch == "pk":
            schema.add_field("pk", DataType.INT64, is_primary=True)
        else:
            schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=4096)
        for name, dtype, params in [
            ("doc_id", DataType.VARCHAR, {"max_length": 4096}),
            ("chunk_index", DataType.INT64, {}),
            ("text", DataType.VARCHAR, {"max_length": 65535}),
            ("metadata", DataType.JSON, {}),
            ("embedding", DataType.FLOAT_VECTOR, {"dim": 4 if mismatch == "dim" else 8}),
            ("src_partition", DataType.INT64, {}),
            ("src_offset", DataType.INT64, {}),
        ][: 5 if mismatch == "positions" else None]:  # "positions": a collection made before fencing
            schema.add_field(name, dtype, **params)
        index = client.prepare_index_params()
        metric = "L2" if mismatch == "metric" else "COSINE"
        index.add_index(
            "embedding", index_type="HNSW", metric_type=metric, params={"M": 8, "efConstruction": 64}
        )
        client.create_collection(f"{prefix}_8", schema=schema, index_params=index)
    finally:
        client.close()
    with pytest.raises(ConfigError, match=f"{prefix}_8") as err:
        make_sink((8,), prefix=prefix)
    expected = {
        "dim": "dim=4, expected 8",
        "pk": "'pk' is INT64",
        "metric": "HNSW/L2",
        "positions": "missing field 'src_partition'; missing field 'src_offset'. It was made before rows",
    }[mismatch]
    assert expected in str(err.value)


@pytest.mark.parametrize("index_type", ["FLAT", "IVF_FLAT", "AUTOINDEX"])
def test_other_index_types_search_and_reopen(make_sink: SinkFactory, index_type: str) -> None:
    prefix = f"index_{index_type.lower()}_{next(_counter)}"
    sink = make_sink(prefix=prefix, index_type=index_type)
    docs = {d: upsert(d, 3) for d in ("x", "y", "z")}
    sink.write(list(docs.values()))
    make_sink(prefix=prefix, index_type=index_type)  # verifies the existing index
    hits = sink.search(8, docs["y"].vectors[8][1:2], top_k=2)
    assert hits[0][0].pk == "y#1"


# ---------------------------------------------------------------------------- writes


def test_upsert_writes_every_replica(make_sink: SinkFactory) -> None:
    sink = make_sink()
    docs = {"a": upsert("a", 3, tag="x"), "b": upsert("b", 1)}
    result = sink.write(list(docs.values()))
    assert (result.rejected, result.documents, result.rows) == ({}, 2, 4)
    assert_replicas(sink, docs)


def test_update_replaces_all_chunks(make_sink: SinkFactory) -> None:
    sink = make_sink()
    sink.write([upsert("doc", 5), upsert("other", 3)])
    sink.write([upsert("doc", 2, version=1)])  # shrinks: chunks 2..4 must go
    assert_replicas(sink, {"doc": upsert("doc", 2, version=1), "other": upsert("other", 3)})
    sink.write([upsert("doc", 4, version=2)])  # grows again
    assert_replicas(sink, {"doc": upsert("doc", 4, version=2), "other": upsert("other", 3)})
    sink.write([upsert("doc", 0, version=3)])  # an empty document keeps no chunk
    assert_replicas(sink, {"other": upsert("other", 3)})


def test_a_retry_deletes_stale_chunks_that_only_a_later_replica_still_holds(
    make_sink: SinkFactory, milvus_uri: str
) -> None:
    # A shrinking write interrupted after the first replica's delete: the others still hold 2..4.
    sink = make_sink()
    sink.write([upsert("doc", 5), upsert("other", 3)])
    client = open_client(milvus_uri)
    try:
        client.delete(sink.collection_name(DIMS[0]), ids=["doc#2", "doc#3", "doc#4"])
    finally:
        client.close()
    sink.write([upsert("doc", 2)])  # the retry: only the later replicas' probes find chunk 2
    assert_replicas(sink, {"doc": upsert("doc", 2), "other": upsert("other", 3)})


def test_delete_removes_every_chunk(make_sink: SinkFactory) -> None:
    sink = make_sink()
    sink.write([upsert("gone", 4), upsert("kept", 2)])
    result = sink.write([DeleteDocument("gone"), DeleteDocument("never-existed")])
    assert (result.documents, result.rows) == (2, 0)
    assert_replicas(sink, {"kept": upsert("kept", 2)})


def test_last_write_wins_within_one_call(make_sink: SinkFactory) -> None:
    sink = make_sink()
    sink.write([upsert("a", 3), upsert("b", 3)])
    writes: list[DocumentWrite] = [
        upsert("a", 2, version=1),
        DeleteDocument("a"),  # upsert then delete: gone
        DeleteDocument("b"),
        upsert("b", 1, version=1),  # delete then upsert: the new version
        upsert("c", 5, version=1),
        upsert("c", 2, version=2),  # two upserts: the last one, chunks 2..4 never appear
    ]
    result = sink.write(writes)
    assert (result.rejected, result.documents, result.rows) == ({}, 3, 3)
    assert_replicas(sink, {"b": upsert("b", 1, version=1), "c": upsert("c", 2, version=2)})


def test_reapplying_a_batch_leaves_milvus_unchanged(make_sink: SinkFactory) -> None:
    # Tiny call limits: the batch takes many upsert calls, documents split across them.
    sink = make_sink(max_call_rows=3, max_call_bytes=2000)
    sink.write([upsert(f"d{i}", 4) for i in range(6)])
    writes: list[DocumentWrite] = [
        *(upsert(f"d{i}", i % 3, version=1) for i in range(0, 6, 2)),
        DeleteDocument("d1"),
        upsert("new", 7, version=1),
    ]
    sink.write(writes)
    first = {dim: sink.fetch_all(dim) for dim in DIMS}
    sink.write(writes)
    assert {dim: sink.fetch_all(dim) for dim in DIMS} == first
    expected = {f"d{i}": upsert(f"d{i}", 4) for i in (3, 5)}
    expected |= {f"d{i}": upsert(f"d{i}", i % 3, version=1) for i in (2, 4)}  # d0 kept 0 chunks
    assert_replicas(sink, expected | {"new": upsert("new", 7, version=1)})


def test_nasty_ids_are_written_updated_and_deleted(make_sink: SinkFactory) -> None:
    sink = make_sink()
    assert sink.write([upsert(d, 3) for d in NASTY_IDS]).rejected == {}
    assert_replicas(sink, {d: upsert(d, 3) for d in NASTY_IDS})
    deleted, shrunk, kept = NASTY_IDS[0::3], NASTY_IDS[1::3], NASTY_IDS[2::3]
    sink.write([*map(DeleteDocument, deleted), *(upsert(d, 1, version=1) for d in shrunk)])
    assert_replicas(sink, {d: upsert(d, 1, version=1) for d in shrunk} | {d: upsert(d, 3) for d in kept})


def test_quote_round_trips_through_the_server(make_sink: SinkFactory, milvus_uri: str) -> None:
    sink = make_sink((8,))
    sink.write([upsert(d, 1, dims=(8,)) for d in NASTY_IDS])
    client = open_client(milvus_uri)
    try:
        for doc_id in NASTY_IDS:
            rows = client.query(
                sink.collection_name(8),
                filter=f"doc_id == {quote(doc_id)}",
                output_fields=["doc_id"],
                consistency_level="Strong",
            )
            assert [r["doc_id"] for r in rows] == [doc_id]
        (expr,) = in_lists("pk", [f"{d}#0" for d in NASTY_IDS], 1000, 10**6)
        rows = client.query(
            sink.collection_name(8), filter=expr, output_fields=["pk"], consistency_level="Strong"
        )
        assert sorted(r["pk"] for r in rows) == sorted(f"{d}#0" for d in NASTY_IDS)
    finally:
        client.close()


def test_expressions_respect_their_limits() -> None:
    ids = ["a", 'b"', "c\\", "d"]
    assert list(in_lists("f", ids, 1000, 10**6)) == ['f in ["a", "b\\"", "c\\\\", "d"]']
    assert list(in_lists("f", ids, 3, 10**6)) == ['f in ["a", "b\\"", "c\\\\"]', 'f in ["d"]']
    assert list(in_lists("f", ["x" * 50, "y"], 1000, 10)) == [f'f in ["{"x" * 50}"]', 'f in ["y"]']
    assert list(any_of(["a", "b", "c" * 20], 20)) == ["(a) or (b)", f"({'c' * 20})"]


# ---------------------------------------------------------------------------- search


def test_search_finds_the_document_first(make_sink: SinkFactory) -> None:
    sink = make_sink()
    docs = {f"doc{i}": upsert(f"doc{i}", 4, tag=i) for i in range(20)}
    sink.write(list(docs.values()))
    sink.flush()
    for dim in DIMS:
        queries = np.stack([docs["doc7"].vectors[dim][2], docs["doc13"].vectors[dim][0]])
        hits = sink.search(dim, queries, top_k=3)
        assert [h[0].pk for h in hits] == ["doc7#2", "doc13#0"]
        best = hits[0][0]
        assert (best.doc_id, best.chunk_index, best.text) == ("doc7", 2, "v0 chunk 2 of doc7")
        assert best.metadata == {"doc": "doc7", "v": 0, "tag": 7}
        assert best.score == pytest.approx(1.0, abs=1e-4) and hits[0][1].score < best.score
    bare = sink.search(8, docs["doc3"].vectors[8][:1], top_k=1, output_fields=())
    assert (bare[0][0].pk, bare[0][0].text, bare[0][0].metadata) == ("doc3#0", None, None)


def test_every_read_and_write_loads_a_released_replica_by_itself(
    make_sink: SinkFactory, milvus_uri: str
) -> None:
    """An operator (or a restart) released the replicas: each call loads them and answers at once."""
    sink = make_sink(prefix=f"released_{next(_counter)}")
    docs = {"a": upsert("a", 2), "b": upsert("b", 1)}
    sink.write(list(docs.values()))
    query = docs["a"].vectors[8][1:2]
    calls: dict[str, Callable[[], object]] = {
        "count": lambda: sink.count(8),
        "search": lambda: [(h.pk, h.text) for h in sink.search(8, query, top_k=1)[0]],
        "fetch": lambda: {pk: row["doc_id"] for pk, row in sink.fetch(8, ["a#1", "b#0", "c#0"]).items()},
        "fetch_all": lambda: [row["pk"] for row in sink.fetch_all(8)],
        "write": lambda: sink.write([upsert("a", 2)]).documents,
    }
    answers = {
        "count": 3,
        "search": [("a#1", "v0 chunk 1 of a")],
        "fetch": {"a#1": "a", "b#0": "b"},
        "fetch_all": ["a#0", "a#1", "b#0"],
        "write": 1,
    }
    client = open_client(milvus_uri)
    try:
        for name, call in calls.items():
            for dim in DIMS:
                client.release_collection(sink.collection_name(dim))
            assert str(client.get_load_state(sink.collection_name(8))["state"]) == "NotLoad", name
            assert call() == answers[name], name
    finally:
        client.close()
    assert_replicas(sink, docs)


# ---------------------------------------------------------------------------- poison


def _poison_cases() -> dict[str, UpsertDocument]:
    nan = upsert("nan", 2)
    nan.vectors[8][1, 3] = np.nan
    huge = upsert("huge", 3)
    wide = UpsertDocument("wide", huge.chunks, {**huge.vectors, 8: np.ones((3, 9), np.float32)})
    zero = upsert("zero", 1)
    zero.vectors[16][0] = 0.0
    long_text = ChunkRow("long-text", 0, "日" * 21845 + "x", {})  # 65536 UTF-8 bytes
    chunk = upsert("other", 1).chunks[0]

    def single(doc_id: str, row: ChunkRow) -> UpsertDocument:
        return UpsertDocument(doc_id, [row], vectors_for(doc_id, 1))

    return {
        "nan": nan,
        "wide": wide,
        "zero": zero,
        "missing-dim": UpsertDocument("missing-dim", huge.chunks[:1], {16: huge.vectors[16][:1]}),
        "long-text": single("long-text", long_text),
        "long-id": upsert("😀" * 512 + "x", 1),
        "surrogate": upsert("lone \ud800 surrogate", 1),
        "bad-json": single("bad-json", ChunkRow("bad-json", 0, "t", {"s": {1}})),
        "nan-json": single("nan-json", ChunkRow("nan-json", 0, "t", {"x": math.nan})),
        "big-json": single("big-json", ChunkRow("big-json", 0, "t", {"x": "y" * 70000})),
        "misnumbered": single("misnumbered", ChunkRow("misnumbered", 1, "t", {})),
        "foreign-chunk": single("foreign-chunk", chunk),
    }


def test_poison_documents_are_rejected_alone(make_sink: SinkFactory) -> None:
    sink = make_sink()
    cases = _poison_cases()
    sink.write([upsert("nan", 3)])  # a previous version survives its poisoned update
    writes: list[DocumentWrite] = [upsert("good", 2)]
    writes += cases.values()
    writes.append(upsert("also-good", 1))
    result = sink.write(writes)
    assert sorted(result.rejected) == list(range(1, len(cases) + 1))
    for position, name in enumerate(cases, start=1):
        exc = result.rejected[position]
        assert isinstance(exc, PoisonInput)
        assert repr(writes[position].doc_id)[:40] in str(exc), (name, str(exc))
    assert (result.documents, result.rows) == (2, 3)
    survivors = {"nan": upsert("nan", 3), "good": upsert("good", 2), "also-good": upsert("also-good", 1)}
    assert_replicas(sink, survivors)


def test_rejected_write_falls_back_to_the_previous_write(make_sink: SinkFactory) -> None:
    sink = make_sink()
    poisoned = upsert("doc", 2, version=2)
    poisoned.vectors[16][0, 0] = np.inf
    result = sink.write([upsert("doc", 3, version=1), poisoned])
    assert list(result.rejected) == [1] and result.rows == 3
    assert_replicas(sink, {"doc": upsert("doc", 3, version=1)})


def test_server_refusal_is_isolated_to_its_document(
    milvus_standalone_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lift our own JSON limit so the document reaches Milvus 2.3.5, which refuses JSON
    # over 64 KiB (code 1100): the batch is retried per document to find it.
    monkeypatch.setattr(milvus_rows, "METADATA_MAX_BYTES", 10**6)
    sink = open_sink(milvus_standalone_uri)
    try:
        big = upsert("big", 2, version=1, blob="z" * 70000)
        result = sink.write([upsert("big", 1), upsert("a", 2), big, upsert("b", 1)])
        assert list(result.rejected) == [2] and "big" in str(result.rejected[2])
        assert "Milvus refused" in str(result.rejected[2])
        assert_replicas(sink, {"big": upsert("big", 1), "a": upsert("a", 2), "b": upsert("b", 1)})
    finally:
        sink.close()


# ----------------------------------------------------------------------- unavailable


def test_closed_port_raises_sink_unavailable(free_port: int) -> None:
    sink = MilvusSink(MilvusSettings(uri=f"http://127.0.0.1:{free_port}", timeout_s=1.0), DIMS)
    start = time.monotonic()
    with pytest.raises(SinkUnavailable, match="unavailable") as err:
        sink.ensure_collections()
    assert err.value.retry_after > 0 and err.value.__cause__ is not None
    with pytest.raises(SinkUnavailable):
        sink.write([upsert("a", 1)])
    assert time.monotonic() - start < 10


def test_a_search_over_the_milvus_limit_is_refused_before_milvus_is_called(free_port: int) -> None:
    sink = MilvusSink(MilvusSettings(uri=f"http://127.0.0.1:{free_port}", timeout_s=1.0), DIMS)
    query = np.ones((1, 8), dtype=np.float32)
    for top_k in (0, MAX_SEARCH_LIMIT + 1):
        with pytest.raises(ValueError, match=r"top_k must be in 1\.\.16384 \(Milvus' limit\)"):
            sink.search(8, query, top_k)
    with pytest.raises(SinkUnavailable):  # within the limit it is sent, and nothing listens
        sink.search(8, query, MAX_SEARCH_LIMIT)


def test_silent_server_raises_sink_unavailable_after_the_timeout() -> None:
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        uri = f"http://127.0.0.1:{listener.getsockname()[1]}"
        sink = MilvusSink(MilvusSettings(uri=uri, timeout_s=1.0), DIMS)
        start = time.monotonic()
        with pytest.raises(SinkUnavailable):
            sink.count(8)
        assert 0.9 < time.monotonic() - start < 10


def test_outage_mid_session_then_recovery(tmp_path: Path, free_port: int, start_lite: LiteLauncher) -> None:
    data = tmp_path / "data"
    uri = f"http://127.0.0.1:{free_port}"
    settings = MilvusSettings(uri=uri, collection_prefix="outage", timeout_s=2.0)
    sink = MilvusSink(settings, DIMS)
    try:
        with start_lite(data, free_port) as (_, proc):
            sink.ensure_collections()
            sink.write([upsert("a", 2)])
            proc.send_signal(signal.SIGSTOP)  # hung server: calls time out
            try:
                with pytest.raises(SinkUnavailable):
                    sink.write([upsert("b", 1)])
            finally:
                proc.send_signal(signal.SIGCONT)
        with pytest.raises(SinkUnavailable):  # server gone: connection refused
            sink.write([upsert("b", 1)])
        with start_lite(data, free_port):  # back on the same data, replicas released: the sink loads them
            sink.write([upsert("b", 1)])
            assert_replicas(sink, {"a": upsert("a", 2), "b": upsert("b", 1)})
        with start_lite(data, free_port):  # restarted while the sink was idle
            try:
                sink.write([upsert("c", 1)])
            except SinkUnavailable:  # the channel still reconnecting (released replicas are loaded at once)
                sink.write([upsert("c", 1)])  # the retry goes through
            assert_replicas(sink, {"a": upsert("a", 2), "b": upsert("b", 1), "c": upsert("c", 1)})
    finally:
        sink.close()
