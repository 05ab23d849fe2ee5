"""Dead-letter records stay under the broker's size limit: a huge rejected event is cut to fit; broker
errors of a send are retried when transient and stop the worker when permanent."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest
from aiokafka import errors

from pipeline.ingest import metrics
from pipeline.ingest.dlq import (
    PERMANENT,
    TRANSIENT,
    DeadLetterQueue,
    DeadLetterSendFailed,
    bounded_payload,
    classify,
)
from pipeline.ingest.reasons import ReasonCode
from pipeline.ingest.units import DeadLetter


def _dead(key: bytes | None, value: bytes | None) -> DeadLetter:
    return DeadLetter(
        "docs", 1, 42, key, value, "value is 11000000 bytes; at most 10485760 allowed", ReasonCode.TOO_LARGE
    )


def test_small_records_are_sent_verbatim() -> None:
    assert bounded_payload(_dead(b"k", b"v" * 10), 11) == (b"k", b"v" * 10, False)
    assert bounded_payload(_dead(None, None), 1) == (None, None, False)


def test_value_is_cut_first_then_the_key() -> None:
    assert bounded_payload(_dead(b"key", b"0123456789"), 8) == (b"key", b"01234", True)
    assert bounded_payload(_dead(b"k" * 20, b"0123"), 8) == (b"k" * 8, b"", True)
    assert bounded_payload(_dead(b"k" * 20, None), 8) == (b"k" * 8, None, True)


class CapturingProducer:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send(self, topic: str, **record: Any) -> asyncio.Future[object]:
        self.sent.append({"topic": topic, **record})
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        future.set_result(None)
        return future


async def test_oversized_dead_letter_carries_its_original_sizes() -> None:
    producer = CapturingProducer()
    queue = DeadLetterQueue(producer, "docs.dlq", 1.0, max_record_bytes=1024)  # type: ignore[arg-type]
    await queue.send([_dead(b"big", b"x" * 5000), _dead(b"small", b"{}")])
    big, small = producer.sent
    assert big["value"] == b"x" * 1021 and big["key"] == b"big"
    assert dict(big["headers"])["truncated_from"] == b"3,5000"
    assert dict(big["headers"])["source_offset"] == b"42"
    assert dict(big["headers"])["reason_code"] == b"too_large"
    assert dict(big["headers"])["error"] == b"value is 11000000 bytes; at most 10485760 allowed"
    assert small["value"] == b"{}" and "truncated_from" not in dict(small["headers"])


# --- broker errors: transient ones retried (only what was not acknowledged), permanent ones stop ---


class FlakyProducer:
    """Acknowledges each record unless ``fail(value, attempt)`` returns an error for that send:
    ``("ack", error)`` fails the acknowledgement, ``("send", error)`` raises from ``send`` itself."""

    def __init__(self, fail: Any) -> None:
        self.fail = fail
        self.attempts: Counter[bytes] = Counter()
        self.acknowledged: list[bytes] = []

    async def send(self, topic: str, **record: Any) -> asyncio.Future[object]:
        value = record["value"]
        self.attempts[value] += 1
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        failure = self.fail(value, self.attempts[value])
        if failure is not None and failure[0] == "send":
            raise failure[1]
        if failure is not None:
            future.set_exception(failure[1])
        else:
            self.acknowledged.append(value)
            future.set_result(None)
        return future


@pytest.fixture
def send_errors(monkeypatch: pytest.MonkeyPatch) -> Counter[tuple[str, str]]:
    """What ``ingest_dlq_send_errors_total`` was incremented by, per (topic, kind)."""
    counted: Counter[tuple[str, str]] = Counter()

    class Recorder:
        def inc(self, value: float, tags: dict[str, str]) -> None:
            counted[(tags["topic"], tags["kind"])] += int(value)

    monkeypatch.setattr(metrics, "_dlq_send_errors", Recorder())
    return counted


def _letters(n: int) -> list[DeadLetter]:
    return [DeadLetter("docs", 0, i, b"k", b"v%d" % i, "not JSON", ReasonCode.NOT_JSON) for i in range(n)]


@pytest.mark.parametrize(
    "error",
    [
        errors.RequestTimedOutError(),
        errors.KafkaTimeoutError(),
        errors.NotLeaderForPartitionError(),
        errors.LeaderNotAvailableError(),
        errors.KafkaConnectionError("connection reset"),
        errors.NodeNotReadyError(),
        errors.NotEnoughReplicasError(),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_transient_errors_are_retried_and_acknowledged_letters_never_resent(
    error: errors.KafkaError, send_errors: Counter[tuple[str, str]]
) -> None:
    assert classify(error)[0] == TRANSIENT
    # v1 fails its acknowledgement twice, v2 once; v0 and v3 are acknowledged at the first try.
    fails = {b"v1": 2, b"v2": 1}
    producer = FlakyProducer(lambda v, n: ("ack", error) if n <= fails.get(v, 0) else None)
    queue = DeadLetterQueue(producer, "docs.dlq", 0.01, 1024, retry_for_s=30)  # type: ignore[arg-type]
    await queue.send(_letters(4))
    assert sorted(producer.acknowledged) == [b"v0", b"v1", b"v2", b"v3"]
    assert producer.attempts == {b"v0": 1, b"v1": 3, b"v2": 2, b"v3": 1}
    assert send_errors == {("docs.dlq", "transient"): 3}


@pytest.mark.parametrize(
    ("error", "where", "hint"),
    [
        (errors.TopicAuthorizationFailedError(), "ack", "grant this client WRITE"),
        (errors.MessageSizeTooLargeError(), "ack", "kafka.dlq_max_record_bytes"),
        (errors.MessageSizeTooLargeError("The message is 2000000 bytes"), "send", "dlq_max_record_bytes"),
        (errors.RecordTooLargeError(), "ack", "kafka.dlq_max_record_bytes"),
        (errors.InvalidTopicError(), "ack", "legal topic name"),
        (errors.UnknownTopicOrPartitionError(), "send", "create it, or fix kafka.dlq_topic"),
        (errors.ClusterAuthorizationFailedError(), "ack", "permission"),
        (errors.UnsupportedVersionError(), "ack", "does not support"),
    ],
    ids=lambda e: type(e).__name__ if isinstance(e, Exception) else str(e),
)
async def test_a_permanent_error_stops_at_once_naming_topic_and_cause(
    error: errors.KafkaError, where: str, hint: str, send_errors: Counter[tuple[str, str]]
) -> None:
    producer = FlakyProducer(lambda v, n: (where, error) if v == b"v1" else None)
    queue = DeadLetterQueue(producer, "docs.dlq", 0.01, 1024, retry_for_s=30)  # type: ignore[arg-type]
    with pytest.raises(DeadLetterSendFailed) as raised:
        await queue.send(_letters(3))
    assert raised.value.__cause__ is error and not raised.value.retriable
    message = str(raised.value)
    assert message.startswith("cannot send ") and "to topic 'docs.dlq'" in message
    assert type(error).__name__ in message and "permanent" in message and hint in message
    assert producer.attempts[b"v1"] == 1  # never retried
    assert send_errors == {("docs.dlq", "permanent"): 1}


async def test_transient_errors_past_the_bound_stop_the_worker_too(
    send_errors: Counter[tuple[str, str]],
) -> None:
    producer = FlakyProducer(lambda v, n: ("ack", errors.RequestTimedOutError()))
    queue = DeadLetterQueue(producer, "docs.dlq", 0.01, 1024, retry_for_s=0.2)  # type: ignore[arg-type]
    with pytest.raises(DeadLetterSendFailed, match=r"still failing after 0 s of retries") as raised:
        await queue.send(_letters(1))
    assert raised.value.retriable and producer.attempts[b"v0"] > 1
    assert send_errors[("docs.dlq", "transient")] == producer.attempts[b"v0"]


async def test_a_permanent_error_wins_over_a_transient_one_in_the_same_round() -> None:
    failures = {b"v0": errors.RequestTimedOutError(), b"v2": errors.TopicAuthorizationFailedError()}
    producer = FlakyProducer(lambda v, n: ("ack", failures[v]) if v in failures else None)
    queue = DeadLetterQueue(producer, "docs.dlq", 0.01, 1024)  # type: ignore[arg-type]
    with pytest.raises(DeadLetterSendFailed, match="TopicAuthorizationFailedError") as raised:
        await queue.send(_letters(3))
    assert raised.value.unsent == 2


def test_an_unknown_non_retriable_error_is_permanent() -> None:
    assert classify(errors.IllegalStateError("producer closed"))[0] == PERMANENT
    assert classify(errors.KafkaError())[0] == PERMANENT
