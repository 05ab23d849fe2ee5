"""Why an event was dead-lettered, as a code: one fixed, documented set, assigned where the event is rejected.

Every rejection carries a :class:`ReasonCode` from the place that raises it, next to its one-line prose
reason.  The code travels on the :class:`~pipeline.ingest.units.DeadLetter`, as the ``reason_code``
header of the dead-letter record and as the ``reason`` tag of ``ingest_events_total``; nothing
classifies the prose afterwards.  The set is closed, so the metric tag stays low-cardinality.

Raised by :func:`pipeline.ingest.events.parse_event` (the record breaks the event contract):

* ``too_large`` — the value is over ``max_value_bytes``.
* ``empty_value`` — the value is zero bytes (a delete is a null value or an op ``delete`` event).
* ``not_utf8`` — the value is not UTF-8.
* ``not_json`` — the value is not JSON: a syntax error, NaN / Infinity, or nesting too deep to parse.
* ``number_out_of_range`` — an integer of more than 20 digits, outside the signed 64-bit range.
* ``duplicate_key`` — a JSON object holds one key twice.
* ``not_object`` — the value is JSON but not an object.
* ``missing_id`` — no ``id`` field and no message key (also a tombstone without a key).
* ``bad_key`` — the message key, needed as the id, is not UTF-8.
* ``key_mismatch`` — the ``id`` field differs from the message key.
* ``unknown_field`` — a field outside ``op, id, text, metadata, instruction``.
* ``bad_op`` — ``op`` is not ``"upsert"`` or ``"delete"``.
* ``wrong_type`` — ``id``, ``text`` or ``instruction`` is not a string.
* ``bad_id`` — the id is empty or contains a NUL character.
* ``too_long`` — the id or the instruction is over its character limit.
* ``missing_text`` — an upsert without ``text``.
* ``text_on_delete`` — a delete that carries ``text``.
* ``blank_text`` — the text is only whitespace, control or invisible format characters.
* ``lone_surrogate`` — the id, text, instruction or metadata holds a lone UTF-16 surrogate.
* ``bad_metadata`` — metadata is not an object, over its size or depth limit, or holds a number
  Milvus cannot store.
* ``invalid_event`` — any other breach of the contract that the parser does not name (none is known;
  the tests assert that every rejection they make gets a more specific code).

Raised after parsing:

* ``missing_tenant`` — :func:`pipeline.ingest.units.build_unit`, with tenants (``milvus.tenant_field``
  set): an upsert whose metadata has no usable tenant at that key (absent, not a string, empty, or over
  1024 UTF-8 bytes).  Never given a default tenant.

* ``unchunkable`` — :func:`pipeline.ingest.units.build_unit`: characters the tokenizer cannot separate
  hold more tokens than a chunk may.
* ``no_tokens`` — :func:`pipeline.ingest.units.build_unit`: the text tokenizes to nothing.
* ``embedder_crash`` — :class:`pipeline.ingest.unit_embedder.UnitEmbedder`: a text of the document
  crashed the embedder actors when run alone.
* ``embedder_error`` — :class:`pipeline.ingest.unit_embedder.UnitEmbedder`: the model raised on a text
  of the document run alone in a forward pass (out of memory, or another error), while it still
  embedded others.
* ``milvus_rejected`` — the consumer: Milvus (or the sink's own check of what Milvus accepts)
  refused the document's write for good.
"""

from __future__ import annotations

from enum import StrEnum

from workers.errors import PipelineError


class ReasonCode(StrEnum):
    """Why an event was dead-lettered (the module docstring says where each is raised)."""

    TOO_LARGE = "too_large"
    EMPTY_VALUE = "empty_value"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NUMBER_OUT_OF_RANGE = "number_out_of_range"
    DUPLICATE_KEY = "duplicate_key"
    NOT_OBJECT = "not_object"
    MISSING_ID = "missing_id"
    BAD_KEY = "bad_key"
    KEY_MISMATCH = "key_mismatch"
    UNKNOWN_FIELD = "unknown_field"
    BAD_OP = "bad_op"
    WRONG_TYPE = "wrong_type"
    BAD_ID = "bad_id"
    TOO_LONG = "too_long"
    MISSING_TEXT = "missing_text"
    TEXT_ON_DELETE = "text_on_delete"
    BLANK_TEXT = "blank_text"
    LONE_SURROGATE = "lone_surrogate"
    BAD_METADATA = "bad_metadata"
    INVALID_EVENT = "invalid_event"
    MISSING_TENANT = "missing_tenant"
    UNCHUNKABLE = "unchunkable"
    NO_TOKENS = "no_tokens"
    EMBEDDER_CRASH = "embedder_crash"
    EMBEDDER_ERROR = "embedder_error"
    MILVUS_REJECTED = "milvus_rejected"


_MAX_REASON_CHARS = 300


class InvalidEvent(PipelineError):
    """A record that breaks the event contract; it will never become valid, so it is not retried.

    ``reason`` is one human-readable line of at most 300 characters that never embeds the payload;
    ``code`` says which rule was broken, from the fixed set of :mod:`pipeline.ingest.reasons`.
    """

    def __init__(self, reason: str, code: ReasonCode) -> None:
        reason = " ".join(reason.splitlines())
        if len(reason) > _MAX_REASON_CHARS:
            reason = reason[: _MAX_REASON_CHARS - 1] + "…"
        super().__init__(reason)
        self.reason = reason
        self.code = code
