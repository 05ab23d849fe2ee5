"""Record batches the consumer cannot decode: a codec library missing, or a corrupt batch.

aiokafka raises these from ``getmany`` without saying which partition failed (a missing codec) and
raises them again at the same offset on every retry and every restart, so they are fatal: the
worker stops with an :class:`UndecodableBatch` naming the topic-partition, the offset and what to do,
instead of a traceback.  The topics of many Java and librdkafka producers are compressed (snappy,
lz4, zstd); the project depends on ``cramjam`` (aiokafka's codec extras), so a normal install
decodes all four codecs.
"""

from __future__ import annotations

import gzip
import time
import zlib

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CorruptRecordException, KafkaError, UnsupportedCodecError

from workers.errors import ConfigError, PipelineError

try:  # a dependency; without it aiokafka raises UnsupportedCodecError for snappy, lz4 and zstd
    from cramjam import DecompressionError as _Undecompressable
except ImportError:  # pragma: no cover
    _Undecompressable = UnsupportedCodecError  # type: ignore[misc]

DECODE_ERRORS: tuple[type[Exception], ...] = (
    UnsupportedCodecError,
    CorruptRecordException,
    _Undecompressable,  # snappy, lz4, zstd payloads that do not decompress
    gzip.BadGzipFile,
    zlib.error,
    EOFError,  # a gzip payload cut short
)
"""What aiokafka raises from a fetch whose record batch cannot be decoded: a codec library missing, a
failed checksum, or (passed through from the codec) a payload that does not decompress."""

CODECS_INSTALL = "pip install 'aiokafka[snappy,lz4,zstd]' (cramjam; a dependency of embedstream)"


class UndecodableBatch(PipelineError):
    """The record batch of ``tp`` holding ``offset`` (the next one to read) cannot be decoded;
    consuming cannot go past it.  Both are None when no probe could tell."""

    def __init__(self, message: str, tp: TopicPartition | None, offset: int | None) -> None:
        super().__init__(message)
        self.tp, self.offset = tp, offset

    def __reduce__(self) -> tuple[type[UndecodableBatch], tuple[str, TopicPartition | None, int | None]]:
        return type(self), (str(self), self.tp, self.offset)  # crosses Ray (consumer actors) whole


class MissingCodec(UndecodableBatch, ConfigError):
    """The batch is compressed with a codec whose library is not installed here."""


class CorruptBatch(UndecodableBatch):
    """The batch fails its CRC or cannot be decompressed: the log holds bad bytes."""


def _where(tp: TopicPartition | None, offset: int | None) -> str:
    if tp is None:
        return "a partition of this consumer"
    return f"{tp.topic}[{tp.partition}] at offset {offset if offset is not None else '?'}"


def _named(exc: Exception) -> str:
    return (
        str(exc) if isinstance(exc, KafkaError) else f"{type(exc).__name__}: {exc}"
    )  # KafkaError names itself


def undecodable(exc: Exception, tp: TopicPartition | None, offset: int | None) -> UndecodableBatch:
    """The named error of ``exc`` (one of :data:`DECODE_ERRORS`) found at ``tp``/``offset``."""
    where = _where(tp, offset)
    if isinstance(exc, UnsupportedCodecError):
        return MissingCodec(
            f"cannot decode the record batch of {where}: {exc}. Install the codecs: {CODECS_INSTALL}, "
            "then restart (nothing past that offset was committed)",
            tp,
            offset,
        )
    return CorruptBatch(
        f"cannot decode the record batch of {where}: {_named(exc)}. The log holds a batch that fails its "
        "checksum or decompression; consuming stops there (move the group's offset past it with "
        "kafka-consumer-groups --reset-offsets to skip it, losing its events)",
        tp,
        offset,
    )


async def locate(consumer: AIOKafkaConsumer, exc: Exception, probe_s: float = 2.0) -> UndecodableBatch:
    """Find where ``exc`` came from: fetch each assigned partition alone, one record at a time, until
    one fails again (its position is then the offset of the batch) or stays quiet for ``probe_s``.

    The records the probes return are dropped: the worker is stopping, and nothing they hold was
    acknowledged, so it is re-read on restart.
    """
    for tp in sorted(consumer.assignment()):
        deadline = time.monotonic() + probe_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                offset = await consumer.position(tp)
            except Exception:  # e.g. revoked meanwhile
                break
            try:
                got = await consumer.getmany(tp, timeout_ms=int(left * 1000), max_records=1)
            except DECODE_ERRORS as again:
                return undecodable(again, tp, offset)
            except Exception:  # the probe only adds detail; the original error is reported anyway
                break
            if not got:
                break
    return undecodable(exc, None, None)
