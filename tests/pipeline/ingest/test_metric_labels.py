"""Dead letters are counted by the reason code set where they were rejected: a small, fixed label set."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.ingest import metrics
from pipeline.ingest.events import parse_event
from pipeline.ingest.reasons import InvalidEvent, ReasonCode


class RecordingCounter:
    """Stands in for the ray.util.metrics counter: keeps every increment with its tags."""

    def __init__(self) -> None:
        self.increments: list[tuple[float, dict[str, str]]] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.increments.append((value, dict(tags or {})))


@pytest.fixture
def events_counter(monkeypatch: pytest.MonkeyPatch) -> RecordingCounter:
    counter = RecordingCounter()
    monkeypatch.setattr(metrics, "_events", counter)
    monkeypatch.setattr(metrics, "_chunks", RecordingCounter())
    return counter


@pytest.mark.parametrize(
    ("key", "value", "code"),
    [
        (b"a", b"{not json", ReasonCode.NOT_JSON),
        (b"a", b"\xff\xfe", ReasonCode.NOT_UTF8),
        (b"a", b"[1, 2]", ReasonCode.NOT_OBJECT),
        (b"a", b"", ReasonCode.EMPTY_VALUE),
        (b"a", b'{"id": "a", "text": "x", "txt": "y"}', ReasonCode.UNKNOWN_FIELD),
        (b"a", b'{"op": "frobnicate", "id": "a", "text": "x"}', ReasonCode.BAD_OP),
        (b"b", b'{"id": "a", "text": "x"}', ReasonCode.KEY_MISMATCH),
        (None, b'{"text": "x"}', ReasonCode.MISSING_ID),
        (b"a", b'{"id": "a", "text": "x", "text": "y"}', ReasonCode.DUPLICATE_KEY),
        (b"a", b'{"id": "a", "text": "x", "metadata": [1]}', ReasonCode.BAD_METADATA),
        # The prose of these three matched none of the old phrases, so all three were "invalid_field".
        (b"a", b'{"id": "a", "text": 5}', ReasonCode.WRONG_TYPE),
        (b"a", b'{"id": "a", "text": " \\t\\u200b"}', ReasonCode.BLANK_TEXT),
        (b"a", b'{"id": "a"}', ReasonCode.MISSING_TEXT),
    ],
)
def test_an_invalid_event_carries_the_code_of_the_rule_it_broke(
    key: bytes | None, value: bytes, code: ReasonCode
) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(key, value)
    assert caught.value.code is code, caught.value.reason


def test_dead_letters_are_counted_by_their_code_and_the_rest_as_ok(events_counter: RecordingCounter) -> None:
    codes = [ReasonCode.UNCHUNKABLE, ReasonCode.EMBEDDER_CRASH, ReasonCode.UNCHUNKABLE, ReasonCode.BLANK_TEXT]
    metrics.unit_done("docs", 10, codes, chunks=7)
    counted: dict[tuple[str, str], float] = {}
    for value, tags in events_counter.increments:
        assert tags["topic"] == "docs"
        counted[tags["outcome"], tags["reason"]] = counted.get((tags["outcome"], tags["reason"]), 0) + value
    assert counted == {
        ("ok", "none"): 6,
        ("dlq", "unchunkable"): 2,
        ("dlq", "embedder_crash"): 1,
        ("dlq", "blank_text"): 1,
    }


def test_the_reason_tag_takes_only_the_documented_labels(events_counter: RecordingCounter) -> None:
    metrics.unit_done("docs", len(ReasonCode) + 1, list(ReasonCode), chunks=0)
    labels = {tags["reason"] for _, tags in events_counter.increments}
    assert labels == set(metrics.REASON_LABELS)
    assert len(metrics.REASON_LABELS) == len(set(metrics.REASON_LABELS)) == len(ReasonCode) + 1
    with pytest.raises(ValueError):  # a prose reason is not a label
        metrics.unit_done("docs", 1, ["text has no tokens"], chunks=0)  # type: ignore[list-item]


def test_every_code_is_documented_in_the_reasons_module() -> None:
    import pipeline.ingest.reasons as reasons

    doc: Any = reasons.__doc__
    for code in ReasonCode:
        assert f"``{code.value}``" in doc, code
