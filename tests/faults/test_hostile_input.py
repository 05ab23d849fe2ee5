"""Scenario 7: a stream that is 30% hostile, in 36 distinct ways, through the real broker, Ray
(MiniLM) and Milvus Lite.  The worker keeps running; every bad event is in the dead-letter
topic with its original bytes and a reason naming what is wrong (checked per kind); every good
one — including the awkward-but-valid ones below — is in every replica; a bad update of a live
document leaves its previous version in place.

Decisions per kind (also in README "Guarantees"):

* Good: mixed scripts, emoji, combining marks, CJK/RTL text; text with escaped NUL characters
  inside; a leading byte-order mark; ids with ``#`` (the primary key ``{id}#{chunk}`` is
  decoded at its *last* ``#`` and deletes select by the ``doc_id`` field, so ``a#1`` can never
  collide with chunk 1 of ``a``), quotes, backslashes, slashes, spaces, a line break, and ids
  of exactly 512 characters (ASCII or 4-byte emoji); metadata 60 levels deep or ~60 KB.
* Bad: everything in ``BAD_KINDS``, e.g. a value over 10 MiB (``events.DEFAULT_MAX_VALUE_BYTES``;
  the dead letter then carries its first ``kafka.dlq_max_record_bytes`` and a ``truncated_from``
  header), an id over 512 characters, metadata with a 1 MB value or non-string keys (not JSON).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers.kafka_io import Record, assert_all_committed, produce, read_topic
from helpers.oracle import Expected, StreamOracle, assert_exact
from helpers.settings import private_settings

from pipeline.runtime.assemble import build_runtime

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

TEN_MIB = 10 * 1024 * 1024


def _json(**fields: object) -> bytes:
    return json.dumps(fields, ensure_ascii=False).encode()


def _nested(depth: int) -> object:
    node: object = "leaf"
    for _ in range(depth):
        node = {"n": node}
    return node


# kind -> (build one record from (rng, key), fragment its dead-letter reason must contain)
BadBuilder = Callable[[random.Random, bytes], Record]
BAD_KINDS: dict[str, tuple[BadBuilder, str]] = {
    "binary garbage": (lambda r, k: Record(k, b"\xff" + r.randbytes(200)), "not UTF-8"),
    "truncated JSON": (lambda r, k: Record(k, _json(id=k.decode(), text="cut")[:-7]), "not JSON"),
    "deeply nested JSON": (lambda r, k: Record(k, b"[" * 100_000 + b"]" * 100_000), "nests too deeply"),
    "metadata too deep": (
        lambda r, k: Record(k, _json(id=k.decode(), text="t", metadata=_nested(100))),
        "nests deeper than 64",
    ),
    "value over 10 MiB": (
        lambda r, k: Record(k, _json(id=k.decode(), text="word " * (TEN_MIB // 5))),
        "at most 10485760 allowed",
    ),
    "whitespace-only text": (lambda r, k: Record(k, _json(id=k.decode(), text=" \n\t\u3000 ")), "blank"),
    "control-character text": (
        lambda r, k: Record(k, _json(id=k.decode(), text="\x01\x02\x7f\u200b\ufeff")),
        "blank",
    ),
    "NUL in id": (lambda r, k: Record(None, _json(id="nul\x00id", text="t")), "NUL character"),
    "raw control byte in JSON": (
        lambda r, k: Record(k, b'{"id": "' + k + b'", "text": "a\x00b"}'),
        "Invalid control character",
    ),
    "lone surrogate in text": (
        lambda r, k: Record(k, b'{"id": "' + k + b'", "text": "half \\udc00 pair"}'),
        "surrogate",
    ),
    "lone surrogate in metadata": (
        lambda r, k: Record(k, b'{"id": "' + k + b'", "text": "t", "metadata": {"s": "\\ud800"}}'),
        "surrogate",
    ),
    "id of 513 characters": (lambda r, k: Record(None, _json(id="i" * 513, text="t")), "at most 512"),
    "id of 600 emoji": (lambda r, k: Record(None, _json(id="🚀" * 600, text="t")), "at most 512"),
    "metadata with non-string keys": (
        lambda r, k: Record(k, b'{"id": "' + k + b'", "text": "t", "metadata": {1: "one"}}'),
        "property name enclosed in double quotes",
    ),
    "metadata with a 1 MB value": (
        lambda r, k: Record(k, _json(id=k.decode(), text="t", metadata={"blob": "m" * 1_000_000})),
        "at most 65536 allowed",
    ),
    "duplicate keys": (
        lambda r, k: Record(k, b'{"id": "' + k + b'", "text": "a", "text": "b"}'),
        "the key 'text' twice",
    ),
    "text is a number": (lambda r, k: Record(k, _json(id=k.decode(), text=42)), "text must be a string"),
    "id is a number": (lambda r, k: Record(None, _json(id=7, text="t")), "id must be a string"),
    "op is a number": (lambda r, k: Record(k, _json(op=1, id=k.decode(), text="t")), "op must be a string"),
    "metadata is a list": (
        lambda r, k: Record(k, _json(id=k.decode(), text="t", metadata=[1])),
        "metadata must be a JSON object, got array",
    ),
    "instruction is a boolean": (
        lambda r, k: Record(k, _json(id=k.decode(), text="t", instruction=True)),
        "instruction must be a string",
    ),
    "upsert without text": (lambda r, k: Record(k, _json(op="upsert", id=k.decode())), "needs a 'text'"),
    "no id and no key": (lambda r, k: Record(None, _json(text="orphan")), "no id and the message has no key"),
    "unknown field": (lambda r, k: Record(k, _json(id=k.decode(), txt="typo")), "unknown field 'txt'"),
    "NaN": (
        lambda r, k: Record(k, b'{"id": "' + k + b'", "text": "t", "metadata": {"x": NaN}}'),
        "NaN is not a JSON number",
    ),
    "huge integer": (
        lambda r, k: Record(k, b'{"id": "' + k + b'", "text": "t", "metadata": {"x": ' + b"9" * 5000 + b"}}"),
        "5000-digit integer",
    ),
    "integer beyond int64": (
        lambda r, k: Record(k, b'{"id": "' + k + b'", "text": "t", "metadata": {"x": 99999999999999999999}}'),
        "signed 64-bit range",
    ),
    "key differs from id": (
        lambda r, k: Record(k, _json(id="someone-else", text="t")),
        "differs from the message key",
    ),
    "empty value": (lambda r, k: Record(k, b""), "value is empty"),
    "JSON array": (lambda r, k: Record(k, b'[{"id": "x", "text": "t"}]'), "JSON array, not an object"),
    "JSON string": (lambda r, k: Record(k, b'"just text"'), "JSON string, not an object"),
    "unknown op": (lambda r, k: Record(k, _json(op="merge", id=k.decode(), text="t")), "unknown op 'merge'"),
    "delete with text": (
        lambda r, k: Record(k, _json(op="delete", id=k.decode(), text="t")),
        "carries no text",
    ),
    "instruction too long": (
        lambda r, k: Record(k, _json(id=k.decode(), text="t", instruction="i" * 1025)),
        "instruction is 1025 characters",
    ),
    "tombstone without key": (
        lambda r, k: Record(b"", None),
        "tombstone (null value) without a message key",
    ),
    "key not UTF-8, no id": (lambda r, k: Record(b"\xc3\x28", _json(text="t")), "message key is not UTF-8"),
    "empty id": (lambda r, k: Record(None, _json(id="", text="t")), "id is empty"),
}

WORDS = ["granite", "lantern", "orbit", "willow", "ember", "quartz", "harbor", "meadow", "signal", "comet"]
GOOD_TEXTS = [
    "Ünïcödé façade — naïve café; 中文文档的分块测试。 العربية نص قصير. Русский текст 🚀👩‍👩‍👧 e\u0301",
    "数据流水线将文档切分为块。每个块都被嵌入并写入向量数据库。",
    "שלום עולם — right-to-left text with numbers 12345 and emoji 🎉.",
    "Text with NUL \u0000 characters \u0000 inside is still text.",
]
GOOD_IDS = [
    "plain-id",
    "has#hash",
    "has#1",  # would be chunk 1 of "has" if pks were split at the first '#'
    "has",
    'quote"d',
    "single'quote",
    "back\\slash",
    "path/like/id.md",
    "with space",
    "line\nbreak",
    "ünïcode-文档-🚀",
    "a" * 512,
    "🚀" * 512,
]
# Live ids that can be spliced into a raw JSON string literal unescaped.
JSON_SAFE_LIVE_IDS = [
    "plain-id",
    "has#hash",
    "has#1",
    "has",
    "path/like/id.md",
    "with space",
    "ünïcode-文档-🚀",
]


def hostile_stream(seed: int = 5) -> tuple[list[Record], StreamOracle, list[tuple[Record, str, str]]]:
    """~70% good events (upserts, updates, deletes) and ~30% bad ones, two of each bad kind
    (one of the 10 MiB one), in random order; returns (records, the oracle of the good ones,
    bad records with their kind and reason fragment).  The bad records are checked apart from
    the oracle: their dead letters may be cut to the dead-letter bound, and each kind's reason
    is matched on its own fragment."""
    rng = random.Random(seed)
    oracle = StreamOracle()
    good: list[Record] = []

    def text() -> str:
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40)))

    def upsert(doc_id: str, body: str, metadata: dict[str, object]) -> None:
        value = ("\ufeff" if rng.random() < 0.1 else "") + json.dumps(
            {"id": doc_id, "text": body, "metadata": metadata}
        )
        good.append(Record(doc_id.encode(), value.encode()))
        oracle.documents[doc_id] = Expected(body, metadata)

    for i, doc_id in enumerate(GOOD_IDS):
        upsert(doc_id, GOOD_TEXTS[i % len(GOOD_TEXTS)] + " " + text(), {"n": i, "deep": _nested(60)})
    upsert("big-metadata", text(), {"blob": "b" * 60_000})
    for i in range(150):
        doc_id = f"doc-{rng.randrange(40)}"
        if rng.random() < 0.15:
            good.append(
                Record(doc_id.encode(), None if rng.random() < 0.5 else _json(op="delete", id=doc_id))
            )
            oracle.documents.pop(doc_id, None)
        else:
            upsert(doc_id, rng.choice(GOOD_TEXTS) + " " + text(), {"i": i})
    bad: list[tuple[Record, str, str]] = []
    for kind, (build, fragment) in BAD_KINDS.items():
        for copy in range(1 if kind == "value over 10 MiB" else 2):
            # The second copy of each kind hits a live good document: it must stay untouched.
            key = f"bad-{len(bad)}" if copy == 0 else rng.choice(JSON_SAFE_LIVE_IDS)
            bad.append((build(rng, key.encode()), kind, fragment))
    records = list(good)
    for record, _, _ in bad:  # spread through the stream, after the first good events
        records.insert(rng.randint(len(GOOD_IDS) + 1, len(records)), record)
    return records, oracle, bad


async def test_hostile_stream_dead_letters_every_bad_event_and_ingests_every_good_one(
    kafka_bootstrap: str, milvus_lite_uri: str, minilm_path: Path, ray_session: None
) -> None:
    records, oracle, bad = hostile_stream()
    assert len(BAD_KINDS) >= 20
    assert 0.28 <= len(bad) / len(records) <= 0.35, len(bad) / len(records)
    settings = private_settings(
        kafka_bootstrap,
        milvus_lite_uri,
        minilm_path,
        name="hostile",
        dims=(128,),
        max_tokens=64,
        consumer={"max_batch_events": 32},
    )
    runtime = await build_runtime(settings)
    try:
        await produce(settings.kafka, records)
        stats = await runtime.new_consumer().run(until_idle_s=3.0)
        assert stats.events == len(records)  # the worker never stopped
        dead = await read_topic(settings.kafka, settings.kafka.dlq_topic)
        assert stats.dead_letters == len(dead) == len(bad)

        # Every bad record, once, with its original bytes (cut to the dead-letter bound only if
        # it exceeds it, then with its original sizes in a header) and a reason that names what
        # is wrong with this kind.
        limit = settings.kafka.dlq_max_record_bytes
        wanted: Counter[tuple[bytes | None, bytes | None, str, str | None]] = Counter()
        for record, _, fragment in bad:
            key, value, truncated_from = record.key, record.value, None
            if value is not None and len(key or b"") + len(value) > limit:
                value = value[: limit - len(key or b"")]
                truncated_from = f"{len(key or b'')},{len(record.value or b'')}"
            wanted[(key, value, fragment, truncated_from)] += 1
        got: Counter[tuple[bytes | None, bytes | None, str, str | None]] = Counter()
        for d in dead:
            headers = {k: v.decode() for k, v in d.headers}
            reason = headers["error"]
            assert "\n" not in reason and len(reason) <= 300, reason
            assert headers["source_topic"] == settings.kafka.topic
            fragments = [f for (k, v, f, _) in wanted if (k, v) == (d.key, d.value) and f in reason]
            assert fragments, f"dead letter {d.key!r}: unexpected record or imprecise reason: {reason}"
            got[(d.key, d.value, fragments[0], headers.get("truncated_from"))] += 1
        assert got == wanted

        await asyncio.to_thread(assert_exact, oracle, runtime.sink, [], settings.kafka.topic)
        await assert_all_committed(settings.kafka)
    finally:
        runtime.close()
