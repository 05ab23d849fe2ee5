"""End to end on real components: Tansu broker → Ray pool (MiniLM) → Milvus (Lite server and Milvus 2.3.5).

Checks every replica against the independent oracle of tests/helpers/oracle.py (fed the stream of
tests/integration/corpus.py), the dead-letter topic against the malformed records and the partition
and offset each was produced at, committed offsets against the log end, and that re-delivering half
the stream leaves Milvus unchanged.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from corpus import build_stream
from helpers.kafka_io import assert_all_committed, committed_and_end, produce, read_topic
from helpers.oracle import StreamOracle
from helpers.settings import private_settings

from pipeline.ingest.kafka import client_options
from pipeline.milvus.sink import MilvusSink
from pipeline.runtime.assemble import build_runtime
from pipeline.settings import Settings
from workers.prompts import format_input

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DIMS = (256, 128)


async def _rewind_group(settings: Settings, to: dict[int, int]) -> None:
    """Commit ``to`` for the worker group, as a member of it (Tansu refuses commits from outside)."""
    consumer = AIOKafkaConsumer(
        **client_options(settings.kafka), group_id=settings.kafka.group_id, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.subscribe([settings.kafka.topic])
        while len(consumer.assignment()) < len(to):
            await consumer.getmany(timeout_ms=200, max_records=1)
        await consumer.commit({TopicPartition(settings.kafka.topic, p): o for p, o in to.items()})
    finally:
        await consumer.stop()


def _rows_by_doc(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    docs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        docs[row["doc_id"]].append(row)
    return {d: sorted(rs, key=lambda r: r["chunk_index"]) for d, rs in docs.items()}


def _check_replicas(
    sink: MilvusSink, dims: tuple[int, ...], oracle: StreamOracle
) -> dict[int, dict[str, np.ndarray]]:
    """Assert every replica equals the oracle; returns pk → vector per dim."""
    native = dims[0]
    vectors: dict[int, dict[str, np.ndarray]] = {}
    for dim in dims:
        rows = sink.fetch_all(dim)
        docs = _rows_by_doc(rows)
        assert set(docs) == set(oracle.documents), f"replica {dim}: documents differ from the oracle"
        for doc_id, chunks in docs.items():
            expected = oracle.documents[doc_id]
            assert [c["chunk_index"] for c in chunks] == list(range(len(chunks))), doc_id
            assert [c["pk"] for c in chunks] == [f"{doc_id}#{i}" for i in range(len(chunks))]
            assert " ".join(c["text"] for c in chunks).split() == expected.text.split(), doc_id
            assert all(c["metadata"] == expected.metadata for c in chunks), doc_id
        matrix = np.array([r["embedding"] for r in rows], dtype=np.float32)
        assert matrix.shape == (len(rows), dim)
        np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-4)
        vectors[dim] = {r["pk"]: np.asarray(r["embedding"], dtype=np.float32) for r in rows}
    for dim in dims[1:]:  # each lower replica is normalize(prefix) of the native one
        for pk, full in vectors[native].items():
            prefix = full[:dim] / np.linalg.norm(full[:dim])
            np.testing.assert_allclose(vectors[dim][pk], prefix, atol=1e-5)
    return vectors


async def test_stream_lands_exactly_in_every_replica(
    kafka_bootstrap: str, milvus_uri: str, minilm_path: Path, ray_session: None
) -> None:
    settings = private_settings(
        kafka_bootstrap,
        milvus_uri,
        minilm_path,
        name="e2e",
        dims=DIMS,
        max_tokens=96,
        consumer={"max_batch_events": 64},
    )
    oracle = build_stream()
    records = oracle.records
    assert len(records) >= 1000 and len(oracle.malformed) >= 15
    runtime = await build_runtime(settings)
    try:
        assert runtime.dims == (384, 256, 128)
        positions = await produce(settings.kafka, records)
        stats = await runtime.new_consumer().run(until_idle_s=2.0)
        assert stats.events == len(records)

        # Offsets: the group committed up to the end of every partition.
        await assert_all_committed(settings.kafka)

        # Dead letters: exactly the malformed records, original bytes, the partition and offset each
        # was produced at, a precise one-line reason.
        dead = await read_topic(settings.kafka, settings.kafka.dlq_topic)
        assert Counter((d.key, d.value) for d in dead) == Counter(
            (r.key, r.value) for r, _ in oracle.malformed
        )
        keyword_of = {(r.key, r.value): k for r, k in oracle.malformed}
        assert all(records.count(r) == 1 for r, _ in oracle.malformed)  # each was produced once
        produced_at = {
            (r.key, r.value): where
            for r, where in zip(records, positions, strict=True)
            if (r.key, r.value) in keyword_of
        }
        for d in dead:
            headers = {k: v.decode() for k, v in d.headers}
            assert headers["source_topic"] == settings.kafka.topic
            source = (int(headers["source_partition"]), int(headers["source_offset"]))
            assert source == produced_at[(d.key, d.value)], (d.key, source)
            reason = headers["error"]
            assert "\n" not in reason and keyword_of[(d.key, d.value)].lower() in reason.lower(), reason

        # Milvus: every replica equals the oracle; vectors unit length and nested.
        sink = runtime.sink
        vectors = await asyncio.to_thread(_check_replicas, sink, runtime.dims, oracle)

        # The native vectors are what sentence-transformers itself computes for the chunk texts.
        from sentence_transformers import SentenceTransformer

        reference = SentenceTransformer(str(minilm_path), device="cpu")
        rows = (await asyncio.to_thread(sink.fetch_all, 384))[:64]
        inputs = [
            format_input(settings.model, r["text"], oracle.documents[r["doc_id"]].instruction) for r in rows
        ]
        expected = reference.encode(inputs, normalize_embeddings=True)
        cosines = np.sum(expected * np.array([vectors[384][r["pk"]] for r in rows]), axis=1)
        assert cosines.min() >= 0.999, cosines.min()

        # Re-delivery: rewind the group to the middle of every partition and ingest again.
        ends = await committed_and_end(settings.kafka)
        await _rewind_group(settings, {p: (end or 0) // 2 for p, (_, end) in ends.items()})
        replay = await runtime.new_consumer().run(until_idle_s=2.0)
        assert replay.events == sum((end or 0) - (end or 0) // 2 for _, end in ends.values())
        again = await asyncio.to_thread(_check_replicas, sink, runtime.dims, oracle)
        for dim in runtime.dims:
            assert again[dim].keys() == vectors[dim].keys()
            for pk, vector in vectors[dim].items():
                np.testing.assert_allclose(again[dim][pk], vector, atol=1e-6)
    finally:
        runtime.close()
