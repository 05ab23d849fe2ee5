"""The dead-letter topic: where every event that cannot be ingested goes, with the reason why."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer
from aiokafka import errors as kafka_errors
from aiokafka.errors import KafkaError

from pipeline.ingest import metrics
from pipeline.ingest.retry import Backoff
from pipeline.ingest.units import DeadLetter
from workers.errors import PipelineError

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


# Broker errors no retry can fix, and what the operator does about each.  UnknownTopicOrPartition is
# "retriable" to aiokafka, but the producer has already waited ``request_timeout_ms`` for the topic's
# metadata when it raises it: the topic is gone or was never made, and the broker does not create it.
_TOO_LARGE = "set kafka.dlq_max_record_bytes under the topic's max.message.bytes"
_PERMANENT: tuple[tuple[type[KafkaError], str], ...] = (
    (kafka_errors.TopicAuthorizationFailedError, "grant this client WRITE on the topic"),
    (kafka_errors.ClusterAuthorizationFailedError, "grant this client the cluster permission it lacks"),
    (kafka_errors.TransactionalIdAuthorizationFailed, "grant this client the permission it lacks"),
    (kafka_errors.MessageSizeTooLargeError, _TOO_LARGE),
    (kafka_errors.RecordTooLargeError, _TOO_LARGE),
    (kafka_errors.RecordListTooLargeError, _TOO_LARGE),
    (kafka_errors.InvalidTopicError, "set kafka.dlq_topic to a legal topic name"),
    (
        kafka_errors.UnknownTopicOrPartitionError,
        "the topic does not exist and the broker does not create it: create it, or fix kafka.dlq_topic",
    ),
    (kafka_errors.UnsupportedVersionError, "the broker does not support this request"),
    (kafka_errors.UnsupportedForMessageFormatError, "the topic's message format is too old"),
    (kafka_errors.PolicyViolationError, "the broker's policy refuses these records"),
    (kafka_errors.InvalidRequiredAcksError, "the broker refuses acks=all"),
)
# Not marked retriable by aiokafka, yet what a broker that is down or slow produces: an expired
# batch (KafkaTimeoutError), no broker reachable, metadata that has not caught up.
_TRANSIENT: tuple[type[KafkaError], ...] = (
    kafka_errors.KafkaTimeoutError,
    kafka_errors.RequestTimedOutError,
    kafka_errors.KafkaConnectionError,
    kafka_errors.NoBrokersAvailable,
    kafka_errors.NodeNotReadyError,
    kafka_errors.StaleMetadata,
    kafka_errors.NotLeaderForPartitionError,
    kafka_errors.LeaderNotAvailableError,
)

TRANSIENT, PERMANENT = "transient", "permanent"


def classify(exc: KafkaError) -> tuple[str, str]:
    """``(kind, what to do)`` of a failed send: ``transient`` (worth retrying: the broker is down,
    slow, or electing a leader) or ``permanent`` (no retry can succeed: authorization, size, topic)."""
    for error_type, hint in _PERMANENT:
        if isinstance(exc, error_type):
            return PERMANENT, hint
    if isinstance(exc, _TRANSIENT) or getattr(exc, "retriable", False):
        return TRANSIENT, "wait for the broker"
    return PERMANENT, "see the broker's answer"


class DeadLetterSendFailed(PipelineError):
    """Dead letters cannot be sent to ``topic``: a permanent broker error, or transient ones for longer
    than the retry bound.  The events are not acknowledged (a restarted worker reads them again)."""

    def __init__(self, topic: str, cause: KafkaError, kind: str, hint: str, unsent: int) -> None:
        super().__init__(
            f"cannot send {unsent} dead letter(s) to topic {topic!r}: {cause} ({kind}; {hint}). "
            "Their offsets are not committed"
        )
        self.topic, self.cause, self.kind, self.unsent = topic, cause, kind, unsent
        self.retriable = kind == TRANSIENT


class DeadLetterQueue:
    """Sends dead letters with their original key and value and the ``error`` (prose),
    ``reason_code`` (:mod:`pipeline.ingest.reasons`) and ``source_*`` headers.

    :meth:`send` returns only once the broker acknowledged every record, so the caller may then
    commit their offsets.  A failed send is classified (:func:`classify`, counted in
    ``ingest_dlq_send_errors_total{kind}``): transient errors are retried with capped backoff for
    up to ``retry_for_s`` — only the records not acknowledged yet are sent again — and a permanent
    error, or transient ones past that bound, raise :class:`DeadLetterSendFailed` naming the topic
    and the cause.  A record may be sent twice if the consumer dies between the send and the
    commit.  A record whose key and value exceed ``max_record_bytes`` (the broker would refuse
    it) is sent with both cut to fit, plus a ``truncated_from`` header holding the original
    ``key_bytes,value_bytes``.
    """

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topic: str,
        backoff_cap_s: float,
        max_record_bytes: int,
        retry_for_s: float = 300.0,
    ) -> None:
        self._producer = producer
        self._topic = topic
        self._backoff_cap_s = backoff_cap_s
        self._max_record_bytes = max_record_bytes
        self._retry_for_s = retry_for_s

    async def send(self, dead_letters: Sequence[DeadLetter]) -> None:
        pending = list(dead_letters)
        backoff = Backoff(cap=self._backoff_cap_s)
        give_up_at = time.monotonic() + self._retry_for_s
        while pending:
            failed, errors = await self._send_round(pending)
            if not errors:
                break
            verdicts = [(classify(exc), exc) for exc in errors]
            for (kind, _), _exc in verdicts:
                metrics.dlq_send_failed(self._topic, kind)
            (kind, hint), error = min(verdicts, key=lambda v: v[0][0] != PERMANENT)  # a permanent one first
            if kind == PERMANENT or time.monotonic() >= give_up_at:
                if kind == TRANSIENT:
                    hint = f"still failing after {self._retry_for_s:.0f} s of retries"
                raise DeadLetterSendFailed(self._topic, error, kind, hint, len(failed)) from error
            delay = backoff.next(1.0)
            log.warning(
                "dead-letter send of %d record(s) to %s failed (%s, transient); retrying in %.1fs",
                len(failed),
                self._topic,
                error,
                delay,
            )
            await asyncio.sleep(delay)
            pending = failed  # the acknowledged ones are never sent again
        for d in dead_letters:
            log.info("dead-lettered %s[%d]@%d: %s", d.topic, d.partition, d.offset, d.reason)

    async def _send_round(self, pending: list[DeadLetter]) -> tuple[list[DeadLetter], list[KafkaError]]:
        """Send ``pending`` once: ``(those not acknowledged, the errors)``."""
        futures: list[asyncio.Future[object]] = []
        errors: list[KafkaError] = []
        for d in pending:
            try:
                futures.append(await self._send_one(d))
            except KafkaError as exc:  # refused before it left (size, metadata): send no more now
                errors.append(exc)
                break
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed: list[DeadLetter] = []
        for d, result in zip(pending, results, strict=False):
            if isinstance(result, KafkaError):
                failed.append(d)
                errors.append(result)
            elif isinstance(result, BaseException):
                raise result  # not the broker's answer: a bug, never retried
        return failed + pending[len(futures) :], errors

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
