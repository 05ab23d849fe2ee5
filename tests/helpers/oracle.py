"""An independent oracle of the final state, and a comparer that reads the real one.

The oracle knows nothing about the worker: it is fed the events as they are produced
(:meth:`StreamOracle.upsert`, :meth:`~StreamOracle.delete`, :meth:`~StreamOracle.event`,
:meth:`~StreamOracle.malformed_record`) and keeps, per document id, the last event in production
order (all events of one id share a key, hence a partition, hence an order), plus every record
that must be dead-lettered.  :data:`WORDS` and :func:`sentence` make the seeded texts of the
streams built on it (tests/faults/streams.py, tests/integration/corpus.py).

:func:`read_replicas` and :func:`helpers.kafka_io.read_topic` read what the pipeline produced
(every replica from Milvus, the dead-letter topic from Kafka); :func:`compare` holds both against
the oracle and counts what was lost, what is extra and what differs.  Chunking is not modelled: a
document's rows must be ``{id}#0 .. {id}#n-1`` whose texts, joined, hold the document's words in
order, each with the document's metadata.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from helpers.kafka_io import Record
from pipeline.milvus.sink import MilvusSink

WORDS = [
    "river",
    "stone",
    "harbor",
    "lantern",
    "meadow",
    "copper",
    "signal",
    "orbit",
    "granite",
    "willow",
    "falcon",
    "ember",
    "tide",
    "quartz",
    "maple",
    "cinder",
    "glacier",
    "prairie",
    "beacon",
    "thistle",
    "basalt",
    "comet",
    "fjord",
    "saffron",
    "tundra",
    "vector",
    "kernel",
    "buffer",
    "socket",
    "cache",
    "shard",
    "replica",
    "commit",
    "offset",
    "partition",
    "broker",
    "cluster",
]

# A dozen short words, for streams of many small documents.
SHORT_WORDS = "amber basalt cobalt delta ember fjord garnet harbor iris jade kelp lumen".split()  # noqa: SIM905


@dataclass(frozen=True)
class Expected:
    """The final state of one live document."""

    text: str
    metadata: dict[str, Any]
    instruction: str | None = None


@dataclass
class StreamOracle:
    """Expected final state: the live documents and the records the DLQ must hold."""

    documents: dict[str, Expected] = field(default_factory=dict)
    malformed: list[tuple[Record, str]] = field(default_factory=list)  # (record, keyword of its reason)
    records: list[Record] = field(default_factory=list)  # everything produced, in order

    def upsert(self, doc_id: str, text: str, metadata: dict[str, Any] | None = None) -> Record:
        """A valid upsert; ``doc_id`` is also the key."""
        event: dict[str, Any] = {"op": "upsert", "id": doc_id, "text": text}
        if metadata is not None:
            event["metadata"] = metadata
        return self.event(event)

    def event(self, event: dict[str, Any]) -> Record:
        """A valid event given as its JSON object (a delete if its ``op`` says so, else an upsert),
        keyed by its ``id``."""
        doc_id = event["id"]
        if event.get("op") == "delete":
            self.documents.pop(doc_id, None)
        else:
            self.documents[doc_id] = Expected(
                event["text"], event.get("metadata", {}), event.get("instruction")
            )
        return self._add(Record(doc_id.encode(), json.dumps(event, ensure_ascii=False).encode()))

    def delete(self, doc_id: str, tombstone: bool = False) -> Record:
        """A delete event, or a Kafka tombstone (null value) when ``tombstone``."""
        self.documents.pop(doc_id, None)
        value = None if tombstone else json.dumps({"op": "delete", "id": doc_id}).encode()
        return self._add(Record(doc_id.encode(), value))

    def malformed_record(self, record: Record, keyword: str) -> Record:
        """A record the worker must dead-letter with a reason containing ``keyword``."""
        self.malformed.append((record, keyword))
        return self._add(record)

    def reject_in_milvus(self, doc_id: str, text: str, metadata: dict[str, Any], keyword: str) -> Record:
        """A valid event Milvus refuses for good: it must end in the DLQ, its previous version stays."""
        event = {"op": "upsert", "id": doc_id, "text": text, "metadata": metadata}
        record = Record(doc_id.encode(), json.dumps(event, ensure_ascii=False).encode())
        return self.malformed_record(record, keyword)

    def resend_last(self) -> Record:
        """The last record again, as an upstream producer retry sends it (same key, same bytes)."""
        last = self.records[-1]
        if self.malformed and self.malformed[-1][0] is last:
            return self.malformed_record(last, self.malformed[-1][1])
        return self._add(last)  # the last event of its id again: the expected state is unchanged

    def _add(self, record: Record) -> Record:
        self.records.append(record)
        return record


def sentence(rng: random.Random) -> str:
    """One sentence of 6 to 16 words from :data:`WORDS`, capitalized, with a full stop."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 16))).capitalize() + "."


def random_text(rng: random.Random, sentences: int) -> str:
    """``sentences`` sentences of :func:`sentence`."""
    return " ".join(sentence(rng) for _ in range(sentences))


def read_replicas(sink: MilvusSink) -> dict[int, list[dict[str, Any]]]:
    """Every row of every replica (pk, doc_id, chunk_index, text, metadata), plus ``count(*)``
    as a separate check: a pk written twice would show there even if a read deduplicated it."""
    replicas: dict[int, list[dict[str, Any]]] = {}
    for dim in sink.dims:
        rows = sink.fetch_all(dim)
        for row in rows:
            row.pop("embedding")
        replicas[dim] = rows
        assert sink.count(dim) == len(rows), f"replica {dim}: count(*) {sink.count(dim)} != {len(rows)} rows"
    return replicas


# ---------------------------------------------------------------------------- comparing


@dataclass
class Verdict:
    """What differs between the oracle and the real state; all zero means exact."""

    documents_expected: int = 0
    rows_seen: int = 0
    lost: list[str] = field(default_factory=list)  # live documents missing from a replica
    extra_rows: list[str] = field(default_factory=list)  # pks that should not exist (or twice)
    wrong: list[str] = field(default_factory=list)  # documents present with the wrong content
    dlq_expected: int = 0
    dlq_missing: list[Record] = field(default_factory=list)
    dlq_unexpected: list[Record] = field(default_factory=list)
    dlq_bad_reason: list[str] = field(default_factory=list)
    dlq_redelivered: int = 0  # dead letters sent again for a source offset (allowed: at-least-once)

    @property
    def exact(self) -> bool:
        return not (
            self.lost
            or self.extra_rows
            or self.wrong
            or self.dlq_missing
            or self.dlq_unexpected
            or self.dlq_bad_reason
        )

    def summary(self) -> str:
        return (
            f"{self.documents_expected} documents expected, {self.rows_seen} rows seen; lost "
            f"{len(self.lost)}, extra rows {len(self.extra_rows)}, wrong {len(self.wrong)}; DLQ: "
            f"{self.dlq_expected} expected, missing {len(self.dlq_missing)}, unexpected "
            f"{len(self.dlq_unexpected)}, bad reasons {len(self.dlq_bad_reason)}, re-sent "
            f"{self.dlq_redelivered}. Examples: lost {self.lost[:3]} extra {self.extra_rows[:3]} "
            f"wrong {self.wrong[:3]} dlq missing {self.dlq_missing[:2]} unexpected {self.dlq_unexpected[:2]} "
            f"reasons {self.dlq_bad_reason[:2]}"
        )


def compare(
    oracle: StreamOracle,
    replicas: dict[int, list[dict[str, Any]]],
    dead_letters: Sequence[Any],
    source_topic: str,
) -> Verdict:
    """Hold every replica and the dead-letter topic's records against ``oracle``."""
    verdict = Verdict(documents_expected=len(oracle.documents), dlq_expected=len(oracle.malformed))
    for dim, rows in replicas.items():
        verdict.rows_seen += len(rows)
        by_doc: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            by_doc[row["doc_id"]].append(row)
        for doc_id in oracle.documents.keys() - by_doc.keys():
            verdict.lost.append(f"{dim}:{doc_id}")
        for doc_id, chunks in by_doc.items():
            expected = oracle.documents.get(doc_id)
            if expected is None:
                verdict.extra_rows.extend(f"{dim}:{c['pk']}" for c in chunks)
                continue
            chunks.sort(key=lambda c: c["chunk_index"])
            pks = [c["pk"] for c in chunks]
            wanted = [f"{doc_id}#{i}" for i in range(len(chunks))]
            if pks != wanted:
                verdict.extra_rows.extend(f"{dim}:{pk}" for pk in sorted(Counter(pks) - Counter(wanted)))
                verdict.wrong.append(f"{dim}:{doc_id}: pks {pks[:5]}")
                continue
            words = " ".join(c["text"] for c in chunks).split()
            if words != expected.text.split():
                verdict.wrong.append(f"{dim}:{doc_id}: text")
            elif any(c["metadata"] != expected.metadata for c in chunks):
                verdict.wrong.append(f"{dim}:{doc_id}: metadata")
    _compare_dead_letters(oracle, dead_letters, source_topic, verdict)
    return verdict


def _compare_dead_letters(
    oracle: StreamOracle, dead_letters: Sequence[Any], source_topic: str, verdict: Verdict
) -> None:
    """Each source offset dead-lettered once (re-sends of one source offset are counted apart),
    and those records exactly the malformed ones, each with a reason naming its problem."""
    by_source: dict[tuple[int, int], Any] = {}
    for d in dead_letters:
        headers = {k: v.decode("utf-8", "replace") for k, v in d.headers}
        if headers.get("source_topic") != source_topic:
            verdict.dlq_bad_reason.append(f"source_topic {headers.get('source_topic')!r}")
            continue
        source = (int(headers["source_partition"]), int(headers["source_offset"]))
        if source in by_source:
            verdict.dlq_redelivered += 1
            continue
        by_source[source] = (Record(d.key, d.value), headers.get("error", ""))
    seen = Counter(record for record, _ in by_source.values())
    wanted = Counter(record for record, _ in oracle.malformed)
    verdict.dlq_missing = list((wanted - seen).elements())
    verdict.dlq_unexpected = list((seen - wanted).elements())
    keywords = {record: keyword for record, keyword in oracle.malformed}
    for record, reason in by_source.values():
        keyword = keywords.get(record)
        if keyword is not None and ("\n" in reason or keyword.lower() not in reason.lower()):
            verdict.dlq_bad_reason.append(f"{record.key!r}: {reason!r} lacks {keyword!r}")


def assert_exact(
    oracle: StreamOracle, sink: MilvusSink, dead_letters: Sequence[Any], source_topic: str
) -> None:
    """Every replica of ``sink`` and the dead-letter topic's records equal ``oracle``."""
    verdict = compare(oracle, read_replicas(sink), dead_letters, source_topic)
    assert verdict.exact, verdict.summary()
