"""`status` against real and missing servers: it reports what it finds and never raises."""

from __future__ import annotations

import numpy as np

from pipeline.documents import ChunkRow, UpsertDocument
from pipeline.milvus.connection import open_client
from pipeline.milvus.sink import MilvusSink
from pipeline.ops import processes
from pipeline.ops.status import NOT_LOADED, collect_status
from pipeline.settings import Settings


def _settings(milvus_uri: str, prefix: str = "status") -> Settings:
    """Settings whose broker is a closed port and whose Ray is unset: only Milvus is probed for real."""
    return Settings.model_validate(
        {
            "kafka": {"bootstrap_servers": f"127.0.0.1:{processes.free_port()}"},
            "milvus": {"uri": milvus_uri, "collection_prefix": prefix, "timeout_s": 5.0},
        }
    )


async def test_status_reports_milvus_down_instead_of_raising() -> None:
    settings = _settings(f"http://127.0.0.1:{processes.free_port()}")  # nothing listens there
    report = await collect_status(settings)
    assert report.milvus.startswith("unreachable (SinkUnavailable: Milvus unavailable while listing")
    assert report.replicas == {}
    assert report.broker == "unreachable"
    lines = report.render(settings).splitlines()
    assert f"milvus   {settings.milvus.uri}: {report.milvus}" in lines


async def test_status_reports_a_released_replica_as_not_loaded_and_leaves_it_released(
    milvus_uri: str,
) -> None:
    """On Milvus Lite and Milvus 2.3.5 (which refuses to count a released collection)."""
    settings = _settings(milvus_uri, "status_released")
    sink = MilvusSink(settings.milvus, (16, 8))
    client = open_client(milvus_uri)
    try:
        sink.ensure_collections()
        vectors = {d: np.full((2, d), d**-0.5, dtype=np.float32) for d in (16, 8)}
        chunks = [ChunkRow("a", i, f"chunk {i}", {}) for i in range(2)]
        sink.write([UpsertDocument("a", chunks, vectors)])
        client.release_collection("status_released_8")

        report = await collect_status(settings)
        assert report.milvus == "up"
        assert report.replicas == {"status_released_16": 2, "status_released_8": NOT_LOADED}
        lines = report.render(settings).splitlines()
        assert "  status_released_16: 2 rows" in lines
        assert f"  status_released_8: {NOT_LOADED}" in lines
        # status only looks; the sink's next read loads the replica, and status counts it again.
        assert str(client.get_load_state("status_released_8")["state"]) == "NotLoad"
        assert sink.count(8) == 2 and len(sink.search(8, vectors[8][:1], top_k=2)[0]) == 2
        assert (await collect_status(settings)).replicas["status_released_8"] == 2
    finally:
        client.close()
        sink.close()
