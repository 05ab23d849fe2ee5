"""A seeded stream of document events for the end-to-end test, on the independent oracle of
tests/helpers/oracle.py: upserts (some many chunks long, some with an instruction), shrinking updates,
deletes, re-delivered duplicates and 20 kinds of malformed record spread through it.
"""

from __future__ import annotations

import json
import random
from typing import Any

from helpers.kafka_io import Record
from helpers.oracle import WORDS, StreamOracle, sentence


def _text(rng: random.Random, paragraphs: int) -> str:
    parts = []
    for p in range(paragraphs):
        sentence_count = rng.randint(2, 6)
        sentences = [sentence(rng) for _ in range(sentence_count)]
        heading = f"## Section {p}\n\n" if p and rng.random() < 0.3 else ""
        parts.append(heading + " ".join(sentences))
    return "\n\n".join(parts)


# (key, value, keyword the DLQ reason must contain) — 20 kinds of malformed input.
def malformed_records() -> list[tuple[Record, str]]:
    long_id = "x" * 513
    return [
        (Record(b"bad-utf8", b'{"id": "a", "text": "\xff\xfe"}'), "UTF-8"),
        (Record(b"not-json", b'{"id": "a", "text": '), "JSON"),
        (Record(b"not-json-2", b"hello world"), "JSON"),
        (Record(b"array", b'[{"id": "a"}]'), "object"),
        (Record(b"string", b'"just a string"'), "object"),
        (Record(b"bad-op", b'{"op": "merge", "id": "a", "text": "t"}'), "op"),
        (Record(None, b'{"text": "no id and no key"}'), "id"),
        (Record(b"empty-id", b'{"id": "", "text": "t"}'), "id"),
        (Record(long_id.encode(), json.dumps({"id": long_id, "text": "t"}).encode()), "512"),
        (Record(b"no-text", b'{"op": "upsert", "id": "no-text"}'), "text"),
        (Record(b"blank-text", b'{"id": "blank-text", "text": "  \\n\\t  "}'), "text"),
        (Record(b"text-type", b'{"id": "text-type", "text": 42}'), "text"),
        (Record(b"id-type", b'{"id": 7, "text": "t"}'), "id"),
        (Record(b"meta-type", b'{"id": "meta-type", "text": "t", "metadata": [1, 2]}'), "metadata"),
        (
            Record(
                b"meta-big",
                json.dumps({"id": "meta-big", "text": "t", "metadata": {"v": "y" * 70000}}).encode(),
            ),
            "metadata",
        ),
        (Record(b"instr-type", b'{"id": "instr-type", "text": "t", "instruction": 5}'), "instruction"),
        (Record(b"extra", b'{"id": "extra", "txt": "typo"}'), "txt"),
        (Record(b"dup-key", b'{"id": "dup-key", "text": "a", "text": "b"}'), "text"),
        (Record(b"surrogate", b'{"id": "surrogate", "text": "bad \\ud800 half"}'), "surrogate"),
        (Record(b"nan", b'{"id": "nan", "text": "t", "metadata": {"x": NaN}}'), "NaN"),
    ]


def build_stream(seed: int = 7, documents: int = 300, target_events: int = 1100) -> StreamOracle:
    """About ``target_events`` records (``.records``): upserts, shrinking updates, deletes, duplicates
    and malformed ones."""
    rng = random.Random(seed)
    oracle = StreamOracle()
    ids = [f"doc-{i:04d}" for i in range(documents)]
    ids += ['quote"d', "back\\slash", "has#hash", "path/like/id.md", "ünïcode-文档-🚀"]

    def emit(event: dict[str, Any]) -> None:
        oracle.event(event)
        if rng.random() < 0.05:  # a re-delivered duplicate right behind the original
            oracle.resend_last()

    for doc_id in ids:  # first version: some long (several chunks)
        paragraphs = rng.choice([1, 1, 2, 3, 12])
        event: dict[str, Any] = {
            "id": doc_id,
            "text": _text(rng, paragraphs),
            "metadata": {"v": 1, "tag": rng.choice(WORDS)},
        }
        if rng.random() < 0.1:
            event["instruction"] = "Represent this passage for retrieval"
        emit(event)
    malformed = malformed_records()
    while len(oracle.records) + len(malformed) < target_events:
        doc_id = rng.choice(ids)
        roll = rng.random()
        if roll < 0.15:
            emit({"op": "delete", "id": doc_id})
        elif roll < 0.35:  # shrink: long document replaced by one short paragraph
            emit({"op": "upsert", "id": doc_id, "text": _text(rng, 1), "metadata": {"v": 2}})
        else:
            emit(
                {
                    "id": doc_id,
                    "text": _text(rng, rng.choice([1, 2, 8])),
                    "metadata": {"v": 3, "n": rng.randint(0, 99)},
                }
            )
    # malformed records are spread through the stream
    for record, keyword in malformed:
        position = rng.randint(0, len(oracle.records))
        oracle.records.insert(position, record)
        oracle.malformed.append((record, keyword))
    return oracle
