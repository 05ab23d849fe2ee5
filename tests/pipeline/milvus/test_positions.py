"""Fencing by source position on the real servers: a write older than what a replica holds for
its document (same partition, lower offset) is left out there and reported as superseded."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from pipeline.documents import ChunkRow, DeleteDocument, SourcePosition, UpsertDocument
from pipeline.milvus.positions import stored_positions
from pipeline.milvus.sink import MilvusSink
from pipeline.settings import MilvusSettings

DIMS = (16, 8)
_counter = itertools.count()


@pytest.fixture
def sink(milvus_uri: str) -> Iterator[MilvusSink]:
    sink = MilvusSink(MilvusSettings(uri=milvus_uri, collection_prefix=f"positions_{next(_counter)}"), DIMS)
    sink.ensure_collections()
    yield sink
    sink.close()


def upsert(doc_id: str, n: int, version: str, source: SourcePosition | None) -> UpsertDocument:
    rng = np.random.default_rng(len(version) + n)
    vectors = {d: rng.normal(size=(n, d)).astype(np.float32) for d in DIMS}
    chunks = [ChunkRow(doc_id, i, f"{version} {i}", {"v": version}) for i in range(n)]
    return UpsertDocument(doc_id, chunks, vectors, source)


def texts(sink: MilvusSink) -> dict[int, dict[str, list[Any]]]:
    """Per replica: ``{doc_id: [text of each chunk, in order]}``."""
    out: dict[int, dict[str, list[Any]]] = {}
    for dim in DIMS:
        docs: dict[str, list[Any]] = {}
        for row in sink.fetch_all(dim):
            docs.setdefault(row["doc_id"], []).append(row["text"])
        out[dim] = docs
    return out


def test_an_older_write_loses_to_what_a_replica_holds(sink: MilvusSink) -> None:
    p0 = lambda offset: SourcePosition(0, offset)  # noqa: E731
    first = sink.write(
        [upsert("a", 3, "new", p0(50)), upsert("b", 2, "new", p0(50)), upsert("c", 1, "new", p0(50))]
    )
    assert first.superseded == frozenset()
    result = sink.write(
        [
            upsert("a", 1, "stale", p0(40)),  # older: a fenced-off member's write, left out
            DeleteDocument("b", p0(49)),  # an older delete loses too
            upsert("c", 2, "replayed", p0(50)),  # the same position again (a re-delivery): written
            upsert("d", 1, "fresh", p0(10)),  # nothing stored: written
        ]
    )
    assert result.superseded == {"a", "b"} and not result.rejected
    want = {"a": ["new 0", "new 1", "new 2"], "b": ["new 0", "new 1"], "c": ["replayed 0", "replayed 1"]}
    assert texts(sink) == {dim: want | {"d": ["fresh 0"]} for dim in DIMS}
    # Positions of another partition are not ordered, and a write without one is a tool's: both win.
    result = sink.write([upsert("a", 1, "other", SourcePosition(1, 0)), upsert("b", 1, "tool", None)])
    assert result.superseded == frozenset()
    assert stored_positions(sink._milvus, sink.collection_name(8), ["a", "b", "c", "zz"]) == {
        "a": SourcePosition(1, 0),
        "b": SourcePosition(-1, -1),
        "c": SourcePosition(0, 50),
    }
    # A newer delete, then the older write it replaced arriving late: the delete leaves no
    # position, so that late write comes back (documented in pipeline.milvus.positions).
    assert sink.write([DeleteDocument("c", p0(60))]).superseded == frozenset()
    assert "c" not in texts(sink)[8]


def test_each_replica_is_checked_on_its_own(sink: MilvusSink) -> None:
    """The newer owner reached only the first replica so far: the stale write loses there and
    lands in the second, which the newer owner's write then overwrites."""
    newer = upsert("a", 2, "newer", SourcePosition(3, 7))
    only_first = MilvusSink(sink._settings, DIMS[:1])
    try:
        only_first.write([newer])
    finally:
        only_first.close()
    result = sink.write([upsert("a", 1, "older", SourcePosition(3, 5))])
    assert result.superseded == {"a"}
    assert texts(sink) == {16: {"a": ["newer 0", "newer 1"]}, 8: {"a": ["older 0"]}}
    sink.write([newer])
    assert texts(sink) == {dim: {"a": ["newer 0", "newer 1"]} for dim in DIMS}
