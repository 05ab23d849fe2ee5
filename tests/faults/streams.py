"""The seeded mixed stream of the fault scenarios 1-4, on the shared oracle of tests/helpers/oracle.py."""

from __future__ import annotations

import os
import random
from collections.abc import Sequence

from helpers.kafka_io import Record
from helpers.oracle import WORDS, StreamOracle, random_text


def fault_seed(base: int) -> int:
    """``base`` moved by ``EMBEDSTREAM_FAULT_SEED`` (default 0): the same scenario with other streams
    and kill points, so the fault suite runs under several seeds (`EMBEDSTREAM_FAULT_SEED=3 pytest`)."""
    return base + 1_000_003 * int(os.environ.get("EMBEDSTREAM_FAULT_SEED", "0"))


def mixed_stream(
    seed: int,
    events: int,
    documents: int = 400,
    delete_ratio: float = 0.15,
    malformed_every: int = 100,
    sentences: Sequence[int] = (1, 1, 2),
) -> StreamOracle:
    """``events`` records over ``documents`` ids: first versions, updates, deletes, tombstones,
    malformed records (one every ``malformed_every``) and re-sent duplicates, seeded."""
    rng = random.Random(fault_seed(seed))
    oracle = StreamOracle()
    ids = [f"doc-{i:05d}" for i in range(documents)]
    broken = [
        (b"not json at all", "JSON"),
        (b'{"id": "x", "text": ', "JSON"),
        (b'{"op": "merge", "id": "%s", "text": "t"}', "op"),
        (b'{"id": "%s", "text": "   "}', "text"),
        (b'{"id": "%s", "text": "a", "text": "b"}', "text"),
    ]
    while len(oracle.records) < events:
        roll = rng.random()
        doc_id = rng.choice(ids)
        if len(oracle.records) % malformed_every == malformed_every - 1:
            raw, keyword = rng.choice(broken)
            value = raw.replace(b"%s", doc_id.encode()) if b"%s" in raw else raw
            oracle.malformed_record(Record(doc_id.encode(), value), keyword)
        elif roll < delete_ratio:
            oracle.delete(doc_id, tombstone=rng.random() < 0.2)
        elif roll < delete_ratio + 0.03 and oracle.records:
            oracle.resend_last()
        else:
            metadata = {"v": len(oracle.records), "tag": rng.choice(WORDS)}
            oracle.upsert(doc_id, random_text(rng, rng.choice(sentences)), metadata)
    return oracle
