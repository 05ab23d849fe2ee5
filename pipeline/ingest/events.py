"""The document-event contract: one Kafka record in, one validated :class:`DocumentEvent` out.

Records come from the ``documents`` topic (``KafkaSettings.topic``):

* key: the document id, UTF-8.  Producers key every event by its document id so that all
  events of a document land in one partition, in order, and log compaction keeps the latest.
* value: a JSON object ``{"op": "upsert"|"delete", "id": str, "text": str, "metadata": {...},
  "instruction": str|null}``.  ``op`` defaults to ``"upsert"``; ``id`` defaults to the key;
  an upsert needs ``text``, a delete has none; ``metadata`` defaults to ``{}``; an empty
  ``instruction`` means none.
* a null value (tombstone) with a key deletes that key.

:func:`parse_event` accepts exactly that and raises
:class:`~pipeline.ingest.reasons.InvalidEvent` for anything else, whatever the bytes: no other
exception escapes it.  Each raise site names the rule broken with a
:class:`~pipeline.ingest.reasons.ReasonCode`, next to the prose reason.  The limits below keep
one event from exhausting memory, the parser's stack or Milvus' field limits.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from pipeline.ingest.event_json import json_type, load_object, quote
from pipeline.ingest.reasons import InvalidEvent, ReasonCode

DEFAULT_MAX_VALUE_BYTES = 10 * 1024 * 1024
"""Largest record value accepted (10 MiB, about 10,000 chunks of 256 tokens); brokers default
to 1 MiB, so this only binds on clusters configured for large messages."""
MAX_ID_CHARS = 512
MAX_INSTRUCTION_CHARS = 1024
"""The instruction prefixes every chunk of the document, so it must stay far below a chunk."""
MAX_METADATA_BYTES = 64 * 1024
"""Measured as compact UTF-8 JSON, the form Milvus stores it in."""
MAX_METADATA_DEPTH = 64
_INT64 = (-(2**63), 2**63 - 1)
_FIELDS = "op, id, text, metadata, instruction"

# A character that is neither whitespace nor an invisible control / format character: text
# without one has nothing to embed.
_VISIBLE = re.compile(r"[^\s\x00-\x1f\x7f-\x9f\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _violation(code: ReasonCode, reason: str) -> PydanticCustomError:
    """A validation error whose pydantic error type is ``code`` (read back by :func:`_reason`)."""
    # The reason goes in as context, never as the template: it may hold braces.
    return PydanticCustomError(code.value, "{reason}", {"reason": reason})


def _reject_surrogates(field: str, value: str) -> None:
    # Strict UTF-8 decoding never yields surrogates, but a JSON "\ud800" escape does, and such
    # a string can never be encoded for Milvus.  ASCII strings are skipped in O(1).
    if not value.isascii() and (found := _SURROGATE.search(value)):
        raise _violation(
            ReasonCode.LONE_SURROGATE,
            f"{field} contains a lone UTF-16 surrogate U+{ord(found.group()):04X} at character "
            f"{found.start()}; it cannot be stored as UTF-8",
        )


def _short(path: str, limit: int = 60) -> str:
    return repr(path[:limit])[1:-1] + ("…" if len(path) > limit else "")


def _check_metadata_tree(metadata: dict[str, Any]) -> None:
    """Depth, key types and numbers of a metadata tree that already fits the byte limit."""
    stack: list[tuple[object, str, int]] = [(metadata, "metadata", 1)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, dict | list | tuple) and depth > MAX_METADATA_DEPTH:
            raise _violation(
                ReasonCode.BAD_METADATA,
                f"metadata nests deeper than {MAX_METADATA_DEPTH} levels (at {_short(path)})",
            )
        if isinstance(node, dict):
            for key, child in node.items():
                if not isinstance(key, str):
                    raise _violation(
                        ReasonCode.BAD_METADATA, f"metadata key {key!r:.40} at {_short(path)} is not a string"
                    )
                stack.append((child, f"{path}.{key}", depth + 1))
        elif isinstance(node, list | tuple):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(node))
        elif isinstance(node, float) and not math.isfinite(node):
            raise _violation(
                ReasonCode.BAD_METADATA, f"metadata holds the non-finite number {node} at {_short(path)}"
            )
        elif isinstance(node, int) and not isinstance(node, bool) and not _INT64[0] <= node <= _INT64[1]:
            raise _violation(
                ReasonCode.BAD_METADATA,
                f"metadata holds an integer outside the signed 64-bit range at {_short(path)}",
            )


class DocumentEvent(BaseModel):
    """One validated document event; every instance satisfies the contract of this module."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    op: Literal["upsert", "delete"] = "upsert"
    id: str = Field(min_length=1, max_length=MAX_ID_CHARS)
    text: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    instruction: str | None = None

    @field_validator("id")
    @classmethod
    def _valid_id(cls, value: str) -> str:
        if "\x00" in value:
            raise _violation(
                ReasonCode.BAD_ID, f"id contains a NUL character at position {value.index(chr(0))}"
            )
        return value  # pydantic itself rejects lone surrogates in a length-checked string

    @field_validator("text")
    @classmethod
    def _valid_text(cls, value: str | None) -> str | None:
        if value is not None:
            if _VISIBLE.search(value) is None:
                raise _violation(
                    ReasonCode.BLANK_TEXT,
                    f"text is blank: its {len(value)} characters are all whitespace or control characters",
                )
            _reject_surrogates("text", value)
        return value

    @field_validator("instruction")
    @classmethod
    def _valid_instruction(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if len(value) > MAX_INSTRUCTION_CHARS:
            raise _violation(
                ReasonCode.TOO_LONG,
                f"instruction is {len(value)} characters long; at most {MAX_INSTRUCTION_CHARS} allowed",
            )
        _reject_surrogates("instruction", value)
        return value

    @field_validator("metadata")
    @classmethod
    def _valid_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            size = len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
        except RecursionError as exc:
            raise _violation(
                ReasonCode.BAD_METADATA, f"metadata nests deeper than {MAX_METADATA_DEPTH} levels"
            ) from exc
        except UnicodeEncodeError as exc:
            raise _violation(
                ReasonCode.LONE_SURROGATE,
                "metadata contains a lone UTF-16 surrogate; it cannot be stored as UTF-8",
            ) from exc
        except (TypeError, ValueError) as exc:
            raise _violation(ReasonCode.BAD_METADATA, f"metadata is not JSON: {exc}") from exc
        if size > MAX_METADATA_BYTES:
            raise _violation(
                ReasonCode.BAD_METADATA,
                f"metadata is {size} bytes as compact JSON; at most {MAX_METADATA_BYTES} allowed",
            )
        _check_metadata_tree(value)
        return value

    @model_validator(mode="after")
    def _text_matches_op(self) -> DocumentEvent:
        if self.op == "upsert" and self.text is None:
            raise _violation(ReasonCode.MISSING_TEXT, "an upsert needs a 'text' string")
        if self.op == "delete" and self.text is not None:
            raise _violation(
                ReasonCode.TEXT_ON_DELETE, "a delete carries no text (did you mean op 'upsert'?)"
            )
        return self


_CODES = frozenset(ReasonCode)


def _reason(error: ErrorDetails) -> tuple[ReasonCode, str]:
    """One pydantic error as its reason code and a sentence about the event's fields."""
    field = str(error["loc"][0]) if error["loc"] else ""
    kind, value = error["type"], error["input"]
    if kind in _CODES:  # raised by this module's validators through _violation
        return ReasonCode(kind), error["msg"]
    if kind == "extra_forbidden":
        return ReasonCode.UNKNOWN_FIELD, f"unknown field {quote(field)} (known fields: {_FIELDS})"
    if kind == "literal_error":  # only op is a Literal
        if isinstance(value, str):
            return ReasonCode.BAD_OP, f"unknown op {quote(value)} (expected 'upsert' or 'delete')"
        return ReasonCode.BAD_OP, f"op must be a string, got {json_type(value)}"
    if kind == "string_too_short":  # only id has a minimum length
        return ReasonCode.BAD_ID, f"{field} is empty"
    if kind == "string_too_long":
        return (
            ReasonCode.TOO_LONG,
            f"{field} is {len(value)} characters long; at most {error['ctx']['max_length']} allowed",
        )
    if kind == "string_unicode":
        return (
            ReasonCode.LONE_SURROGATE,
            f"{field} contains a lone UTF-16 surrogate; it cannot be stored as UTF-8",
        )
    if kind == "string_type":
        return ReasonCode.WRONG_TYPE, f"{field} must be a string, got {json_type(value)}"
    if kind == "dict_type":  # only metadata is an object
        return ReasonCode.BAD_METADATA, f"{field} must be a JSON object, got {json_type(value)}"
    return ReasonCode.INVALID_EVENT, f"{field or 'event'}: {error['msg']}"


def _validate(fields: dict[str, Any], id_from_key: bool) -> DocumentEvent:
    try:
        return DocumentEvent.model_validate(fields)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        # An unknown field explains the rest (a typo like "txt" also leaves "text" missing).
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        code, reason = _reason(first)
        if id_from_key and first["loc"][:1] == ("id",):
            reason += " (the id is the message key)"
        if len(errors) > 1:
            reason += f"; {len(errors) - 1} more problem(s)"
        raise InvalidEvent(reason, code) from exc


def _key_as_id(key: bytes | None, without_key: str) -> str:
    # Kafka clients send either null or b"" for "no key"; both mean none here.
    if not key:
        raise InvalidEvent(without_key, ReasonCode.MISSING_ID)
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(
            f"message key is not UTF-8 ({exc.reason} at byte {exc.start}) and is needed as the id",
            ReasonCode.BAD_KEY,
        ) from exc


def parse_event(
    key: bytes | None, value: bytes | None, *, max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
) -> DocumentEvent:
    """Validate one Kafka record against the event contract.

    Raises :class:`InvalidEvent` (and nothing else, for any ``key`` and ``value`` bytes) when the
    record breaks the contract, including when the JSON ``id`` differs from a non-empty key: the
    key decides the partition, so a mismatch would let a document's events overtake each other.
    """
    if value is None:
        return _validate(
            {"op": "delete", "id": _key_as_id(key, "tombstone (null value) without a message key")}, True
        )
    if not value:
        raise InvalidEvent(
            "value is empty (a delete is a null value or an op 'delete' event)", ReasonCode.EMPTY_VALUE
        )
    if len(value) > max_value_bytes:
        raise InvalidEvent(
            f"value is {len(value)} bytes; at most {max_value_bytes} allowed", ReasonCode.TOO_LARGE
        )
    fields = load_object(value)
    if "id" in fields:
        event = _validate(fields, False)
        if key and event.id.encode() != key:
            shown = key.decode("utf-8", "backslashreplace")
            raise InvalidEvent(
                f"id {quote(event.id)} differs from the message key {quote(shown)}; "
                "events must be keyed by their document id to stay in order",
                ReasonCode.KEY_MISMATCH,
            )
        return event
    fields["id"] = _key_as_id(key, "event has no id and the message has no key")
    return _validate(fields, True)
