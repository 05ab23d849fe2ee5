"""Dead-letter reasons become a small, fixed set of metric labels."""

from __future__ import annotations

import pytest

from pipeline.ingest.events import InvalidEvent, parse_event
from pipeline.ingest.metrics import reason_kind


@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [
        (b"a", b"{not json", "not_json"),
        (b"a", b"\xff\xfe", "not_utf8"),
        (b"a", b"[1, 2]", "not_object"),
        (b"a", b"", "empty_value"),
        (b"a", b'{"id": "a", "text": "x", "txt": "y"}', "unknown_field"),
        (b"a", b'{"op": "frobnicate", "id": "a", "text": "x"}', "bad_op"),
        (b"b", b'{"id": "a", "text": "x"}', "key_mismatch"),
        (None, b'{"text": "x"}', "missing_id"),
        (b"a", b'{"id": "a", "text": "x", "text": "y"}', "duplicate_key"),
        (b"a", b'{"id": "a", "text": "x", "metadata": [1]}', "bad_metadata"),
        (b"a", b'{"id": "a", "text": 5}', "invalid_field"),
    ],
)
def test_reasons_of_invalid_events_map_to_their_kind(key: bytes | None, value: bytes, kind: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(key, value)
    assert reason_kind(caught.value.reason) == kind, caught.value.reason


def test_reasons_raised_after_parsing_have_their_own_kinds() -> None:
    assert reason_kind("rejected by Milvus: row too large") == "milvus_rejected"
    assert reason_kind("text has no tokens") == "no_tokens"
