"""Record batches the consumer cannot decode: a codec library missing, or a corrupt batch.

aiokafka raises these from ``getmany`` without saying which partition failed (a missing codec) and
raises them again at the same offset on every retry and every restart, so they are fatal: the
worker stops with an :class:`UndecodableBatch` naming the topic-partition, the offset and what to do,
instead of a traceback.  The topics of many Java and librdkafka producers are compressed (snappy,
lz4, zstd); the project depends on ``cramjam`` (aiokafka's codec extras), so a normal install
decodes all four codecs.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CorruptRecordException, UnsupportedCodecError

from workers.errors import ConfigError, PipelineError

DECODE_ERRORS = (UnsupportedCodecError, CorruptRecordException)
"""What aiokafka raises from a fetch whose record batch cannot be decoded."""

CODECS_INSTALL = "pip install 'aiokafka[snappy,lz4,zstd]' (cramjam; a dependency of embedstream)"


class UndecodableBatch(PipelineError):
    """A record batch of ``tp`` at or after ``offset`` cannot be decoded; consuming cannot go past it."""

    def __init__(self, message: str, tp: TopicPartition | None, offset: int | None) -> None:
        super().__init__(message)
        self.tp, self.offset = tp, offset


class MissingCodec(UndecodableBatch, ConfigError):
    """The batch is compressed with a codec whose library is not installed here."""


class CorruptBatch(UndecodableBatch):
    """The batch fails its CRC or cannot be decompressed: the log holds bad bytes."""


def _where(tp: TopicPartition | None, offset: int | None) -> str:
    if tp is None:
        return "a partition of this consumer"
    return f"{tp.topic}[{tp.partition}] at offset {offset if offset is not None else '?'} or after"


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
        f"cannot decode the record batch of {where}: {exc}. The log holds a batch that fails its "
        "checksum or decompression; consuming stops there (move the group's offset past it with "
        "kafka-consumer-groups --reset-offsets to skip it, losing its events)",
        tp,
        offset,
    )


async def locate(consumer: AIOKafkaConsumer, exc: Exception, probe_s: float = 2.0) -> UndecodableBatch:
    """Find which assigned partition ``exc`` came from by fetching each alone until one fails again.

    The records the probes return are dropped: the worker is stopping, and nothing they hold was
    acknowledged, so it is re-read on restart.
    """
    for tp in sorted(consumer.assignment()):
        try:
            offset = await consumer.position(tp)
            await asyncio.wait_for(consumer.getmany(tp, timeout_ms=int(probe_s * 1000)), probe_s * 2)
        except DECODE_ERRORS as again:
            return undecodable(again, tp, offset)
        except Exception:  # the probe only adds detail; the original error is reported anyway
            continue
    return undecodable(exc, None, None)
