"""The dead-letter topic: where every event that cannot be ingested goes, with the reason why."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.ingest.retry import Backoff
from pipeline.ingest.units import DeadLetter

log = logging.getLogger(__name__)

DLQ_HEADER_ROOM = 64 * 1024
"""Bytes a dead-letter record may add on top of its key and value (headers, framing); the
producer's request limit is the record bound plus this."""


def bounded_payload(dead_letter: DeadLetter, max_bytes: int) -> tuple[bytes | None, bytes | None, bool]:
    """``(key, value, truncated)``: the original key and value, or — when together they exceed
    ``max_bytes`` — their prefixes (the value is cut first, then the key) that fit it."""
    key, value = dead_letter.key, dead_letter.value
    size = len(key or b"") + len(value or b"")
    if size <= max_bytes:
        return key, value, False
    if value is not None:
        value = value[: max(0, max_bytes - len(key or b""))]
    if key is not None:
        key = key[: max_bytes - len(value or b"")]
    return key, value, True


class DeadLetterQueue:
    """Sends dead letters with their original key and value and the ``error`` (prose),
    ``reason_code`` (:mod:`pipeline.ingest.reasons`) and ``source_*`` headers.

    :meth:`send` returns only once the broker acknowledged every record (transient broker
    failures are retried with capped backoff), so the caller may then commit their offsets.
    A record may be sent twice if the consumer dies between the send and the commit.  A record
    whose key and value exceed ``max_record_bytes`` (the broker would refuse it, and the
    retries would never end) is sent with both cut to fit, plus a ``truncated_from`` header
    holding the original ``key_bytes,value_bytes``.
    """

    def __init__(
        self, producer: AIOKafkaProducer, topic: str, backoff_cap_s: float, max_record_bytes: int
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._backoff_cap_s = backoff_cap_s
        self._max_record_bytes = max_record_bytes

    async def send(self, dead_letters: Sequence[DeadLetter]) -> None:
        if not dead_letters:
            return
        backoff = Backoff(cap=self._backoff_cap_s)
        while True:
            try:
                sends = [await self._send_one(d) for d in dead_letters]
                await asyncio.gather(*sends)
                break
            except KafkaError as exc:
                delay = backoff.next(1.0)
                log.warning("dead-letter send failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
        for d in dead_letters:
            log.info("dead-lettered %s[%d]@%d: %s", d.topic, d.partition, d.offset, d.reason)

    async def _send_one(self, dead_letter: DeadLetter) -> asyncio.Future[object]:
        key, value, truncated = bounded_payload(dead_letter, self._max_record_bytes)
        headers = dead_letter.headers()
        if truncated:
            original = f"{len(dead_letter.key or b'')},{len(dead_letter.value or b'')}"
            headers.append(("truncated_from", original.encode()))
        future: asyncio.Future[object] = await self._producer.send(
            self._topic, key=key, value=value, headers=headers
        )
        return future
