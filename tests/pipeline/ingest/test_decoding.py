"""A record batch that cannot be decoded becomes a named error saying where and what to do: with a
fake consumer, and on the real broker with batches whose compressed payload is garbage (the CRC,
computed over the garbage, is valid: what a buggy producer writes)."""

from __future__ import annotations

import asyncio
import json
import pickle

import aiokafka.record._crecords.default_records as c_records
import aiokafka.record.default_records as py_records
import pytest
from aiokafka import TopicPartition
from aiokafka.errors import CorruptRecordException, UnsupportedCodecError
from helpers.fakes import AcceptingSink, OnesEmbedder, WordSpans
from helpers.kafka_io import Record, committed_and_end, produce
from helpers.settings import private_settings

from pipeline.ingest.chunking import Chunker
from pipeline.ingest.consumer import IngestConsumer
from pipeline.ingest.decoding import CorruptBatch, MissingCodec, locate
from pipeline.ingest.kafka import ensure_topics, make_producer
from workers.errors import ConfigError

GOOD, BAD = TopicPartition("docs", 0), TopicPartition("docs", 1)


class ProbedConsumer:
    """Two partitions; fetching ``BAD`` alone raises ``error`` again, ``GOOD`` returns nothing."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.probed: list[TopicPartition] = []

    def assignment(self) -> set[TopicPartition]:
        return {BAD, GOOD}

    async def position(self, tp: TopicPartition) -> int:
        return 17 if tp == BAD else 3

    async def getmany(
        self, tp: TopicPartition, timeout_ms: int, max_records: int
    ) -> dict[TopicPartition, list[object]]:
        self.probed.append(tp)
        if tp == BAD:
            raise self.error
        return {}


async def test_a_missing_codec_names_the_partition_offset_and_the_install() -> None:
    consumer = ProbedConsumer(UnsupportedCodecError("Libraries for zstd compression codec not found"))
    error = await locate(consumer, consumer.error)  # type: ignore[arg-type]
    assert isinstance(error, MissingCodec) and isinstance(error, ConfigError)  # the CLI exits 2
    assert (error.tp, error.offset) == (BAD, 17)
    assert str(error).startswith("cannot decode the record batch of docs[1] at offset 17: ")
    assert "zstd compression codec not found" in str(error) and "aiokafka[snappy,lz4,zstd]" in str(error)
    assert consumer.probed == [GOOD, BAD]


async def test_a_corrupt_batch_is_not_a_configuration_error() -> None:
    consumer = ProbedConsumer(CorruptRecordException("Invalid CRC - docs-1"))
    error = await locate(consumer, consumer.error)  # type: ignore[arg-type]
    assert isinstance(error, CorruptBatch) and not isinstance(error, ConfigError)
    assert (error.tp, error.offset) == (BAD, 17) and "--reset-offsets" in str(error)


async def test_an_error_no_probe_repeats_is_still_named() -> None:
    consumer = ProbedConsumer(CorruptRecordException("gone"))
    consumer.error = RuntimeError("the probe itself failed")  # the probes find nothing to blame
    error = await locate(consumer, CorruptRecordException("Invalid CRC"))  # type: ignore[arg-type]
    assert isinstance(error, CorruptBatch) and error.tp is None
    assert "a partition of this consumer" in str(error)


def _event(i: int) -> Record:
    return Record(f"d{i}".encode(), json.dumps({"id": f"d{i}", "text": f"text {i}"}).encode())


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
async def test_a_batch_that_does_not_decompress_stops_the_worker_at_its_offset(
    kafka_bootstrap: str, codec: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = private_settings(kafka_bootstrap, name="corrupt", kafka={"partitions": 1})
    await ensure_topics(settings.kafka)
    await produce(settings.kafka, [_event(i) for i in range(3)])  # offsets 0-2, uncompressed
    garbage = f"not {codec} at all".encode()
    with monkeypatch.context() as patch:  # the producer's encoder (C extension and Python) writes garbage
        patch.setattr(py_records, f"{codec}_encode", lambda *_a, **_k: garbage)
        patch.setattr(c_records, f"{codec}_encode", lambda *_a, **_k: garbage)
        producer = make_producer(settings.kafka, compression_type=codec)
        await producer.start()
        try:
            await (await producer.send(settings.kafka.topic, key=b"d3", value=_event(3).value))  # offset 3
        finally:
            await producer.stop()
    await produce(settings.kafka, [_event(i) for i in range(4, 6)])
    sink = AcceptingSink()
    worker = IngestConsumer(settings, OnesEmbedder(), sink, Chunker(WordSpans(), max_tokens=16), (8,))
    with pytest.raises(CorruptBatch) as raised:
        await asyncio.wait_for(worker.run(until_idle_s=30), 60)
    error = raised.value
    assert (error.tp, error.offset) == (TopicPartition(settings.kafka.topic, 0), 3), str(error)
    assert str(error).startswith(f"cannot decode the record batch of {settings.kafka.topic}[0] at offset 3: ")
    assert "--reset-offsets" in str(error)
    ((committed, end),) = (await committed_and_end(settings.kafka)).values()
    assert (committed or 0) <= 3 and end == 6 and "d3" not in sink.written


def test_the_errors_cross_process_boundaries_whole() -> None:
    for error in (MissingCodec("no zstd", BAD, 17), CorruptBatch("bad crc", BAD, 4)):
        copy = pickle.loads(pickle.dumps(error))  # a consumer actor's error reaches the driver so
        assert type(copy) is type(error) and (str(copy), copy.tp, copy.offset) == (
            str(error),
            error.tp,
            error.offset,
        )
