"""The event contract: what parse_event accepts, and the one-line reason for everything it rejects."""

from __future__ import annotations

import json
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from pipeline.ingest.events import (
    DEFAULT_MAX_VALUE_BYTES,
    MAX_ID_CHARS,
    MAX_METADATA_BYTES,
    MAX_METADATA_DEPTH,
    DocumentEvent,
    parse_event,
)
from pipeline.ingest.reasons import InvalidEvent, ReasonCode
from workers.errors import PipelineError


def _value(**fields: Any) -> bytes:
    return json.dumps(fields).encode()


def _reason(key: bytes | None, value: bytes | None) -> str:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(key, value)
    return caught.value.reason


def test_full_upsert() -> None:
    event = parse_event(
        b"doc-1",
        _value(
            op="upsert", id="doc-1", text="Hello", metadata={"lang": "en", "n": [1, 2.5]}, instruction="q: "
        ),
    )
    assert event == DocumentEvent(
        op="upsert", id="doc-1", text="Hello", metadata={"lang": "en", "n": [1, 2.5]}, instruction="q: "
    )


def test_defaults_and_id_from_key() -> None:
    event = parse_event("dok/ü#1".encode(), _value(text="Hi"))
    assert (event.op, event.id, event.text, event.metadata, event.instruction) == (
        "upsert",
        "dok/ü#1",
        "Hi",
        {},
        None,
    )


def test_id_without_key() -> None:
    assert parse_event(None, _value(id='a "quoted" \\ id', text="x")).id == 'a "quoted" \\ id'


@pytest.mark.parametrize("key", [b"k", b""])
def test_delete_event(key: bytes) -> None:
    event = parse_event(key, _value(op="delete", id="k"))
    assert (event.op, event.id, event.text) == ("delete", "k", None)


def test_tombstone_deletes_the_key() -> None:
    assert parse_event("späti".encode(), None) == DocumentEvent(op="delete", id="späti")


@pytest.mark.parametrize("instruction", ["", "  \n"])
def test_blank_instruction_means_none(instruction: str) -> None:
    assert parse_event(b"k", _value(text="x", instruction=instruction)).instruction is None


def test_byte_order_mark_is_ignored() -> None:
    assert parse_event(b"k", b"\xef\xbb\xbf" + _value(text="x")).text == "x"


def test_limits_are_inclusive() -> None:
    long_id = "i" * MAX_ID_CHARS
    assert parse_event(None, _value(id=long_id, text="x")).id == long_id
    metadata = {"a": "m" * (MAX_METADATA_BYTES - len('{"a":""}'))}
    assert parse_event(b"k", _value(text="x", metadata=metadata)).metadata == metadata
    deep: Any = 1
    for _ in range(63):  # with the metadata object itself: 64 levels
        deep = [deep]
    assert parse_event(b"k", _value(text="x", metadata={"d": deep})).metadata == {"d": deep}
    assert (
        parse_event(b"k", _value(text="x", metadata={"i": -(2**63), "j": 2**63 - 1})).metadata["j"]
        == 2**63 - 1
    )


def test_large_value_within_the_limit() -> None:
    text = "word " * (2 * 1024 * 1024)  # 10 MiB minus the envelope
    value = _value(id="big", text=text[: DEFAULT_MAX_VALUE_BYTES - 100])
    assert len(value) <= DEFAULT_MAX_VALUE_BYTES
    assert parse_event(b"big", value).text == text[: DEFAULT_MAX_VALUE_BYTES - 100]


def test_max_value_bytes_is_configurable() -> None:
    value = _value(text="x" * 100)
    assert parse_event(b"k", value, max_value_bytes=len(value)).text == "x" * 100
    with pytest.raises(InvalidEvent, match=f"value is {len(value)} bytes; at most 50 allowed"):
        parse_event(b"k", value, max_value_bytes=50)


_DEEP = b'{"text": "x", "metadata": {"a": ' + b"[" * 64 + b"]" * 64 + b"}}"

REJECTED: list[tuple[bytes | None, bytes | None, str, ReasonCode]] = [
    (None, None, "tombstone (null value) without a message key", ReasonCode.MISSING_ID),
    (b"", None, "tombstone (null value) without a message key", ReasonCode.MISSING_ID),
    (
        b"\xff\xfe",
        None,
        "message key is not UTF-8 (invalid start byte at byte 0) and is needed as the id",
        ReasonCode.BAD_KEY,
    ),
    (b"k", b"", "value is empty", ReasonCode.EMPTY_VALUE),
    (
        b"k",
        b"\x00\x00\x00{",
        "value is not JSON: Expecting value at line 1 column 1 (char 0)",
        ReasonCode.NOT_JSON,
    ),
    (
        b"k",
        b'{"text": "caf\xe9"}',
        "value is not UTF-8: invalid continuation byte (0xe9) at byte 13",
        ReasonCode.NOT_UTF8,
    ),
    (
        b"k",
        b'{"text": "x",}',
        "value is not JSON: Expecting property name enclosed in double quotes at line 1",
        ReasonCode.NOT_JSON,
    ),
    (
        b"k",
        b'{"text": "x"} {}',
        "value is not JSON: Extra data at line 1 column 15 (char 14)",
        ReasonCode.NOT_JSON,
    ),
    (b"k", b"[1, 2]", "value is a JSON array, not an object", ReasonCode.NOT_OBJECT),
    (b"k", b"null", "value is a JSON null, not an object", ReasonCode.NOT_OBJECT),
    (b"k", b'"text"', "value is a JSON string, not an object", ReasonCode.NOT_OBJECT),
    (
        b"k",
        b'{"text": "x", "op": "UPSERT"}',
        "unknown op 'UPSERT' (expected 'upsert' or 'delete')",
        ReasonCode.BAD_OP,
    ),
    (
        b"k",
        b'{"text": "x", "op": "' + b"o" * 500 + b'"}',
        "unknown op 'oooooooooooooooooooooooooooooooooooooooo'…",
        ReasonCode.BAD_OP,
    ),
    (b"k", b'{"text": "x", "op": 1}', "op must be a string, got number", ReasonCode.BAD_OP),
    (None, b'{"text": "x"}', "event has no id and the message has no key", ReasonCode.MISSING_ID),
    (b"", b'{"text": "x"}', "event has no id and the message has no key", ReasonCode.MISSING_ID),
    (
        b"\xc3",
        b'{"text": "x"}',
        "message key is not UTF-8 (unexpected end of data at byte 0)",
        ReasonCode.BAD_KEY,
    ),
    (None, b'{"id": "", "text": "x"}', "id is empty", ReasonCode.BAD_ID),
    (
        None,
        _value(id="i" * 513, text="x"),
        "id is 513 characters long; at most 512 allowed",
        ReasonCode.TOO_LONG,
    ),
    (
        b"i" * 600,
        b'{"text": "x"}',
        "id is 600 characters long; at most 512 allowed (the id is the message key)",
        ReasonCode.TOO_LONG,
    ),
    (None, b'{"id": 7, "text": "x"}', "id must be a string, got number", ReasonCode.WRONG_TYPE),
    (
        None,
        b'{"id": "a\\u0000b", "text": "x"}',
        "id contains a NUL character at position 1",
        ReasonCode.BAD_ID,
    ),
    (
        b"a\x00",
        None,
        "id contains a NUL character at position 1 (the id is the message key)",
        ReasonCode.BAD_ID,
    ),
    (
        None,
        b'{"id": "\\udfff", "text": "x"}',
        "id contains a lone UTF-16 surrogate; it cannot be stored as UTF-8",
        ReasonCode.LONE_SURROGATE,
    ),
    (
        b"key",
        _value(id="other", text="x"),
        "id 'other' differs from the message key 'key'",
        ReasonCode.KEY_MISMATCH,
    ),
    (
        b"\xff",
        _value(id="other", text="x"),
        "id 'other' differs from the message key '\\\\xff'",
        ReasonCode.KEY_MISMATCH,
    ),
    (b"k", b"{}", "an upsert needs a 'text' string", ReasonCode.MISSING_TEXT),
    (b"k", b'{"text": null}', "an upsert needs a 'text' string", ReasonCode.MISSING_TEXT),
    (b"k", b'{"text": ["x"]}', "text must be a string, got array", ReasonCode.WRONG_TYPE),
    (b"k", b'{"text": true}', "text must be a string, got boolean", ReasonCode.WRONG_TYPE),
    (
        b"k",
        b'{"text": ""}',
        "text is blank: its 0 characters are all whitespace or control characters",
        ReasonCode.BLANK_TEXT,
    ),
    (
        b"k",
        b'{"text": " \\n\\t\\u0000\\u200b\\u00a0"}',
        "text is blank: its 6 characters are all whitespace",
        ReasonCode.BLANK_TEXT,
    ),
    (
        b"k",
        b'{"text": "ok \\ud83d"}',
        "text contains a lone UTF-16 surrogate U+D83D at character 3",
        ReasonCode.LONE_SURROGATE,
    ),
    (
        b"k",
        b'{"op": "delete", "text": "x"}',
        "a delete carries no text (did you mean op 'upsert'?)",
        ReasonCode.TEXT_ON_DELETE,
    ),
    (
        b"k",
        b'{"txt": "x"}',
        "unknown field 'txt' (known fields: op, id, text, metadata, instruction)",
        ReasonCode.UNKNOWN_FIELD,
    ),
    (
        b"k",
        b'{"text": "x", "Text": "y", "op": 3}',
        "unknown field 'Text' (known fields: op, id, text, metadata, instruction); 1 more problem(s)",
        ReasonCode.UNKNOWN_FIELD,
    ),
    (
        b"k",
        b'{"text": "x", "metadata": [1]}',
        "metadata must be a JSON object, got array",
        ReasonCode.BAD_METADATA,
    ),
    (
        b"k",
        b'{"text": "x", "metadata": "a=b"}',
        "metadata must be a JSON object, got string",
        ReasonCode.BAD_METADATA,
    ),
    (
        b"k",
        _value(text="x", metadata={"a": "m" * MAX_METADATA_BYTES}),
        "metadata is 65544 bytes as compact JSON; at most 65536 allowed",
        ReasonCode.BAD_METADATA,
    ),
    (b"k", _DEEP, "metadata nests deeper than 64 levels (at metadata.a[0][0]", ReasonCode.BAD_METADATA),
    (
        b"k",
        b'{"text": "x", "metadata": {"a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}}",
        "value is not usable JSON: it nests too deeply to parse",
        ReasonCode.NOT_JSON,
    ),
    (
        b"k",
        b'{"text": "x", "metadata": {"k\\udc00": 1}}',
        "metadata contains a lone UTF-16 surrogate",
        ReasonCode.LONE_SURROGATE,
    ),
    (
        b"k",
        b'{"text": "x", "metadata": {"a": NaN}}',
        "value is not JSON: NaN is not a JSON number",
        ReasonCode.NOT_JSON,
    ),
    (
        b"k",
        b'{"text": "x", "metadata": {"a": -Infinity}}',
        "value is not JSON: -Infinity is not a JSON number",
        ReasonCode.NOT_JSON,
    ),
    (
        b"k",
        b'{"text": "x", "metadata": {"a": {"b": 1e999}}}',
        "metadata holds the non-finite number inf at metadata.a.b",
        ReasonCode.BAD_METADATA,
    ),
    (
        b"k",
        b'{"text": "x", "metadata": {"a": [9223372036854775808]}}',
        "metadata holds an integer outside the signed 64-bit range at metadata.a[0]",
        ReasonCode.BAD_METADATA,
    ),
    (
        b"k",
        b'{"text": "x", "metadata": {"a": ' + b"9" * 5000 + b"}}",
        "value holds a 5000-digit integer, outside the signed 64-bit range",
        ReasonCode.NUMBER_OUT_OF_RANGE,
    ),
    (
        b"k",
        b'{"text": "x", "metadata": {"a": 1, "b": {"c": 1, "c": 2}}}',
        "value has the key 'c' twice in one JSON object",
        ReasonCode.DUPLICATE_KEY,
    ),
    (
        b"k",
        b'{"text": "x", "text": "y"}',
        "value has the key 'text' twice in one JSON object",
        ReasonCode.DUPLICATE_KEY,
    ),
    (
        b"k",
        b'{"text": "x", "instruction": 5}',
        "instruction must be a string, got number",
        ReasonCode.WRONG_TYPE,
    ),
    (
        b"k",
        _value(text="x", instruction="i" * 1025),
        "instruction is 1025 characters long; at most 1024 allowed",
        ReasonCode.TOO_LONG,
    ),
    (
        b"k",
        b'{"text": "x", "instruction": "\\ud800"}',
        "instruction contains a lone UTF-16 surrogate U+D800",
        ReasonCode.LONE_SURROGATE,
    ),
]


@pytest.mark.parametrize(("key", "value", "expected", "code"), REJECTED)
def test_rejection_reasons(key: bytes | None, value: bytes | None, expected: str, code: ReasonCode) -> None:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(key, value)
    reason = caught.value.reason
    assert reason.startswith(expected)
    assert "\n" not in reason and len(reason) <= 300
    assert caught.value.code is code, reason


def test_every_code_of_the_event_contract_is_exercised() -> None:
    after_parsing = {ReasonCode.UNCHUNKABLE, ReasonCode.NO_TOKENS, ReasonCode.EMBEDDER_CRASH}
    after_parsing |= {ReasonCode.EMBEDDER_ERROR}  # the model failed on the text run alone
    after_parsing |= {ReasonCode.MILVUS_REJECTED, ReasonCode.INVALID_EVENT}  # the last: none is known
    after_parsing |= {ReasonCode.MISSING_TENANT}  # test_units.py, test_tenant_isolation.py (real broker)
    tested_below = {ReasonCode.TOO_LARGE}  # test_oversized_value_is_rejected_before_parsing
    assert {code for *_, code in REJECTED} | tested_below == set(ReasonCode) - after_parsing


def test_oversized_value_is_rejected_before_parsing() -> None:
    value = b"[" * (DEFAULT_MAX_VALUE_BYTES + 1)
    with pytest.raises(InvalidEvent) as caught:
        parse_event(b"k", value)
    assert caught.value.reason == f"value is {len(value)} bytes; at most {DEFAULT_MAX_VALUE_BYTES} allowed"
    assert caught.value.code is ReasonCode.TOO_LARGE


def test_reason_never_embeds_a_huge_payload() -> None:
    reason = _reason(b"k", _value(text="x", **{"t" * 100_000: 1}))
    assert reason.startswith("unknown field 'tttt") and len(reason) < 150


def test_invalid_event_is_a_permanent_pipeline_error() -> None:
    error = InvalidEvent("line one\nline two " + "x" * 1000, ReasonCode.NOT_JSON)
    assert isinstance(error, PipelineError) and not error.retriable and error.code is ReasonCode.NOT_JSON
    assert "\n" not in error.reason and len(error.reason) == 300 and str(error) == error.reason


def test_model_enforces_the_contract_when_built_directly() -> None:
    with pytest.raises(ValidationError):
        DocumentEvent(id="a", text="   ")
    with pytest.raises(ValidationError):
        DocumentEvent(id="a", text="x", metadata={"s": {1, 2}})
    event = DocumentEvent(id="a", text="x")
    with pytest.raises(ValidationError):
        event.text = "y"  # type: ignore[misc]


# --- properties ---------------------------------------------------------------------------

_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_ids = st.text(min_size=1, max_size=40).filter(lambda s: "\x00" not in s)
_texts = st.text(min_size=1, max_size=200).filter(lambda s: not s.isspace() and any(c.isalnum() for c in s))


_OPS: list[Literal["upsert", "delete"]] = ["upsert", "delete"]


@st.composite
def _events(draw: st.DrawFn) -> DocumentEvent:
    op = draw(st.sampled_from(_OPS))
    return DocumentEvent(
        op=op,
        id=draw(_ids),
        text=draw(_texts) if op == "upsert" else None,
        metadata=draw(st.dictionaries(st.text(max_size=8), _json_values, max_size=4)),
        instruction=draw(st.none() | st.text(min_size=1, max_size=30).filter(lambda s: s.strip())),
    )


@settings(max_examples=150, deadline=None)
@given(event=_events(), key_is_id=st.booleans(), ascii_json=st.booleans(), omit_defaults=st.booleans())
def test_valid_events_round_trip(
    event: DocumentEvent, key_is_id: bool, ascii_json: bool, omit_defaults: bool
) -> None:
    fields = event.model_dump(exclude_defaults=omit_defaults)
    key = event.id.encode() if key_is_id else None
    if key_is_id and omit_defaults:
        del fields["id"]
    assert parse_event(key, json.dumps(fields, ensure_ascii=ascii_json).encode()) == event


def _assert_parses_or_rejects(key: bytes | None, value: bytes | None) -> None:
    try:
        event = parse_event(key, value)
    except InvalidEvent as error:
        assert error.reason and "\n" not in error.reason and len(error.reason) <= 300
        assert error.reason.splitlines() == [error.reason]
        assert error.code is not ReasonCode.INVALID_EVENT, error.reason  # every rejection is named
    else:
        assert isinstance(event, DocumentEvent)


@settings(max_examples=300, deadline=None)
@given(key=st.none() | st.binary(max_size=20), value=st.none() | st.binary(max_size=200))
def test_any_bytes_give_an_event_or_invalid_event(key: bytes | None, value: bytes | None) -> None:
    _assert_parses_or_rejects(key, value)


_field_names = st.sampled_from(["op", "id", "text", "metadata", "instruction", "txt", "Id"])


@settings(max_examples=150, deadline=None)
@given(
    key=st.none() | st.binary(max_size=8) | _ids.map(str.encode),
    fields=st.dictionaries(_field_names, _json_values | st.sampled_from(["upsert", "delete"]), max_size=5),
    raw_tail=st.sampled_from(["", " ", "}", ', "x": NaN}', "\\ud800", "[[[[", "\x00"]),
)
def test_near_valid_json_gives_an_event_or_invalid_event(
    key: bytes | None, fields: dict[str, Any], raw_tail: str
) -> None:
    document = json.dumps(fields)
    _assert_parses_or_rejects(key, document.encode())
    _assert_parses_or_rejects(key, (document[:-1] + raw_tail).encode("utf-8", "surrogatepass"))


# Hostile shapes (fault scenario 7): any text, any nesting depth — an event or a precise reason.


_any_chars = st.characters() | st.integers(0xD800, 0xDFFF).map(chr)  # lone surrogates included


@settings(max_examples=300, deadline=None)
@given(text=st.lists(_any_chars, max_size=60).map("".join), ascii_json=st.booleans())
def test_any_text_is_kept_verbatim_or_rejected_as_blank_or_surrogate(text: str, ascii_json: bool) -> None:
    value = json.dumps({"id": "d", "text": text}, ensure_ascii=ascii_json).encode("utf-8", "surrogatepass")
    try:
        event = parse_event(b"d", value)
    except InvalidEvent as error:
        assert "text is blank" in error.reason or "surrogate" in error.reason or "not UTF-8" in error.reason
        assert error.code in (ReasonCode.BLANK_TEXT, ReasonCode.LONE_SURROGATE, ReasonCode.NOT_UTF8)
    else:  # JSON joins an escaped surrogate pair into its character, as UTF-16 does
        assert event.text == text.encode("utf-16-le", "surrogatepass").decode("utf-16-le")


@settings(max_examples=100, deadline=None)
@given(depth=st.integers(0, 5000), container=st.sampled_from(["[", '{"k": ']))
def test_any_nesting_depth_is_accepted_or_rejected_as_too_deep(depth: int, container: str) -> None:
    closing = "]" if container == "[" else "}"
    nested = container * depth + "1" + closing * depth
    value = f'{{"id": "d", "text": "t", "metadata": {{"x": {nested}}}}}'.encode()
    try:
        event = parse_event(b"d", value)
    except InvalidEvent as error:
        assert "nests" in error.reason and "deep" in error.reason, error.reason
        assert depth >= MAX_METADATA_DEPTH - 2
    else:
        assert depth < MAX_METADATA_DEPTH and event.metadata
