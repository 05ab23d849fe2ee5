"""Strict JSON decoding of an event's value: UTF-8, one object, no duplicate keys, no NaN or
Infinity, no integer longer than 20 digits.

:func:`load_object` raises :class:`~pipeline.ingest.reasons.InvalidEvent` (with its code) for
anything else and nothing else, whatever the bytes; deep nesting is refused, not a crash.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from pipeline.ingest.reasons import InvalidEvent, ReasonCode


def quote(text: str, limit: int = 40) -> str:
    """``text`` as a short, escaped, single-line literal."""
    return repr(text[:limit]) + ("…" if len(text) > limit else "")


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise InvalidEvent(
                    f"value has the key {quote(key)} twice in one JSON object", ReasonCode.DUPLICATE_KEY
                )
            seen.add(key)
    return obj


def _reject_constant(name: str) -> NoReturn:
    raise InvalidEvent(f"value is not JSON: {name} is not a JSON number", ReasonCode.NOT_JSON)


def _reject_huge_int(digits: str) -> int:
    # int() of thousands of digits is slow and raises past 4300; no such number fits int64.
    if len(digits) > 20:
        raise InvalidEvent(
            f"value holds a {len(digits)}-digit integer, outside the signed 64-bit range",
            ReasonCode.NUMBER_OUT_OF_RANGE,
        )
    return int(digits)


_DECODER = json.JSONDecoder(
    object_pairs_hook=_unique_object, parse_constant=_reject_constant, parse_int=_reject_huge_int
)


def load_object(value: bytes) -> dict[str, Any]:
    try:
        document = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidEvent(
            f"value is not UTF-8: {exc.reason} (0x{value[exc.start]:02x}) at byte {exc.start}",
            ReasonCode.NOT_UTF8,
        ) from exc
    if document.startswith("\ufeff"):
        # RFC 8259 lets parsers ignore a byte-order mark; some Windows producers add one.
        document = document[1:]
    try:
        obj = _DECODER.decode(document)
    except json.JSONDecodeError as exc:
        raise InvalidEvent(
            f"value is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos})",
            ReasonCode.NOT_JSON,
        ) from exc
    except RecursionError as exc:
        raise InvalidEvent(
            "value is not usable JSON: it nests too deeply to parse", ReasonCode.NOT_JSON
        ) from exc
    if not isinstance(obj, dict):
        raise InvalidEvent(f"value is a JSON {json_type(obj)}, not an object", ReasonCode.NOT_OBJECT)
    return obj
