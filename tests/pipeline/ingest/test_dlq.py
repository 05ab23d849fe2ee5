"""Dead-letter records stay under the broker's size limit: a huge rejected event is cut to fit."""

from __future__ import annotations

import asyncio
from typing import Any

from pipeline.ingest.dlq import DeadLetterQueue, bounded_payload
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
