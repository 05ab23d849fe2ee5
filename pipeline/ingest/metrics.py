"""Consumer-side metrics, recorded with ``ray.util.metrics`` (exported as ``ray_ingest_*`` by Ray).

A worker process joins Ray before it consumes, so its metrics go to its node's metrics agent
like the actors' (:mod:`workers.metrics`).  Before ``ray.init`` (unit tests with fakes)
recording does nothing.  Tags stay low-cardinality: topic, partition, outcome, a dead-letter
*kind* (never the free-text reason) (the replica collection is :mod:`pipeline.milvus.metrics`' tag).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence

from aiokafka import TopicPartition

from workers.metrics import MetricSpec

EVENTS = MetricSpec(
    "ingest_events_total",
    "counter",
    "Events fully handled (offset acknowledged), by outcome (ok, dlq) and dead-letter reason kind.",
    ("topic", "outcome", "reason"),
)
CHUNKS = MetricSpec("ingest_chunks_embedded_total", "counter", "Chunks embedded and written.", ("topic",))
LAG = MetricSpec(
    "ingest_consumer_lag",
    "gauge",
    "Per partition: high watermark minus the group's committed offset, as seen by its owner.",
    ("topic", "partition"),
)
END_TO_END = MetricSpec(
    "ingest_end_to_end_seconds",
    "histogram",
    "Per event: from its Kafka record timestamp to the commit of its offset.",
    ("topic",),
    (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0),
)

SPECS: tuple[MetricSpec, ...] = (EVENTS, CHUNKS, LAG, END_TO_END)
"""Every metric the ingest loop records (the replica writes: :mod:`pipeline.milvus.metrics`)."""

OK = "ok"
DLQ = "dlq"

# First match wins; the phrases are those of pipeline.ingest.events, pipeline.ingest.units and the consumer.
_REASON_KINDS: tuple[tuple[str, str], ...] = (
    ("rejected by Milvus", "milvus_rejected"),
    ("text has no tokens", "no_tokens"),
    ("not UTF-8", "not_utf8"),
    ("surrogate", "lone_surrogate"),
    ("not JSON", "not_json"),
    ("not usable JSON", "not_json"),
    ("-digit integer", "not_json"),
    ("twice in one JSON object", "duplicate_key"),
    ("not an object", "not_object"),
    ("value is empty", "empty_value"),
    ("bytes; at most", "too_large"),
    ("unknown field", "unknown_field"),
    ("unknown op", "bad_op"),
    ("op must be", "bad_op"),
    ("differs from the message key", "key_mismatch"),
    ("no id", "missing_id"),
    ("without a message key", "missing_id"),
    ("metadata", "bad_metadata"),
)


def reason_kind(reason: str) -> str:
    """A dead-letter reason as one of a fixed set of labels (``invalid_field`` when none fits)."""
    return next((kind for phrase, kind in _REASON_KINDS if phrase in reason), "invalid_field")


_events = EVENTS.counter()
_chunks = CHUNKS.counter()
_lag = LAG.gauge()
_end_to_end = END_TO_END.histogram()


def unit_done(topic: str, events: int, dead_letter_reasons: Iterable[str], chunks: int) -> None:
    """A unit of ``events`` was acknowledged: the dead-lettered ones by reason, the rest ok."""
    reasons = list(dead_letter_reasons)
    if events > len(reasons):
        _events.inc(events - len(reasons), tags={"topic": topic, "outcome": OK, "reason": "none"})
    kinds: dict[str, int] = {}
    for reason in reasons:
        kinds[reason_kind(reason)] = kinds.get(reason_kind(reason), 0) + 1
    for kind, count in kinds.items():
        _events.inc(count, tags={"topic": topic, "outcome": DLQ, "reason": kind})
    if chunks:
        _chunks.inc(chunks, tags={"topic": topic})


class CommitLatency:
    """End-to-end latency and lag of the partitions one consumer owns.

    :meth:`dispatched` records the record timestamps of each unit as it is built (units of a
    partition are dispatched in offset order); :meth:`committed` observes, for every event below
    the committed offset, ``now - timestamp``; :meth:`refresh_lag` sets each owned partition's
    lag (high watermark minus committed offset).
    """

    def __init__(self, topic: str) -> None:
        self._topic = topic
        self._pending: dict[TopicPartition, deque[tuple[int, list[int]]]] = {}
        self._committed: dict[TopicPartition, int] = {}

    def assigned(self, tp: TopicPartition, committed: int | None) -> None:
        """This member owns ``tp`` from ``committed`` on (None: the group has no offset there yet)."""
        self._committed[tp] = committed or 0

    def dispatched(self, tp: TopicPartition, end_offset: int, timestamps_ms: Sequence[int]) -> None:
        """Events up to ``end_offset`` (exclusive) were dispatched, with these record timestamps."""
        self._pending.setdefault(tp, deque()).append((end_offset, list(timestamps_ms)))

    def committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """``offsets`` were committed: observe the latency of every event below them."""
        now_ms = time.time() * 1000
        for tp, offset in offsets.items():
            if tp in self._committed:
                self._committed[tp] = offset
            pending = self._pending.get(tp)
            while pending and pending[0][0] <= offset:
                for timestamp in pending.popleft()[1]:
                    _end_to_end.observe(max(0.0, (now_ms - timestamp) / 1000), tags={"topic": self._topic})

    def refresh_lag(self, highwater: Callable[[TopicPartition], int | None]) -> None:
        """Set the lag of every owned partition whose high watermark is known."""
        for tp, committed in self._committed.items():
            end = highwater(tp)
            if end is not None:
                _lag.set(max(0, end - committed), tags={"topic": tp.topic, "partition": str(tp.partition)})

    def forget(self, tp: TopicPartition) -> None:
        """``tp`` was revoked: drop what was not committed and report no lag from this member."""
        self._pending.pop(tp, None)
        if self._committed.pop(tp, None) is not None:
            _lag.set(0, tags={"topic": tp.topic, "partition": str(tp.partition)})
