"""A record batch that cannot be decoded becomes a named error saying where and what to do."""

from __future__ import annotations

from aiokafka import TopicPartition
from aiokafka.errors import CorruptRecordException, UnsupportedCodecError

from pipeline.ingest.decoding import CorruptBatch, MissingCodec, locate
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

    async def getmany(self, tp: TopicPartition, timeout_ms: int) -> dict[TopicPartition, list[object]]:
        self.probed.append(tp)
        if tp == BAD:
            raise self.error
        return {}


async def test_a_missing_codec_names_the_partition_offset_and_the_install() -> None:
    consumer = ProbedConsumer(UnsupportedCodecError("Libraries for zstd compression codec not found"))
    error = await locate(consumer, consumer.error)  # type: ignore[arg-type]
    assert isinstance(error, MissingCodec) and isinstance(error, ConfigError)  # the CLI exits 2
    assert (error.tp, error.offset) == (BAD, 17)
    assert str(error).startswith("cannot decode the record batch of docs[1] at offset 17 or after: ")
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
