"""The dead-letter topic: where every event that cannot be ingested goes, with the reason why."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.retry import Backoff
from pipeline.work import DeadLetter

log = logging.getLogger(__name__)


class DeadLetterQueue:
    """Sends dead letters with their original key and value and the ``error``/``source_*`` headers.

    :meth:`send` returns only once the broker acknowledged every record (transient broker
    failures are retried with capped backoff), so the caller may then commit their offsets.
    A record may be sent twice if the worker dies between the send and the commit.
    """

    def __init__(self, producer: AIOKafkaProducer, topic: str, backoff_cap_s: float) -> None:
        self._producer = producer
        self._topic = topic
        self._backoff_cap_s = backoff_cap_s

    async def send(self, dead_letters: Sequence[DeadLetter]) -> None:
        if not dead_letters:
            return
        backoff = Backoff(cap=self._backoff_cap_s)
        while True:
            try:
                sends = [
                    await self._producer.send(self._topic, key=d.key, value=d.value, headers=d.headers())
                    for d in dead_letters
                ]
                await asyncio.gather(*sends)
                break
            except KafkaError as exc:
                delay = backoff.next(1.0)
                log.warning("dead-letter send failed (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
        for d in dead_letters:
            log.info("dead-lettered %s[%d]@%d: %s", d.topic, d.partition, d.offset, d.reason)
