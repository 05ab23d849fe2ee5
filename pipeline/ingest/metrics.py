"""Consumer-side metrics, recorded with ``ray.util.metrics`` (exported as ``ray_ingest_*`` by Ray).

A consumer process joins Ray before it consumes, so its metrics go to its node's metrics agent
like the actors' (:mod:`workers.metrics`).  Before ``ray.init`` (unit tests with fakes)
recording does nothing.  Tags stay low-cardinality: topic, partition, outcome, and a dead letter's
:class:`~pipeline.ingest.reasons.ReasonCode` (a fixed set, :data:`REASON_LABELS`; never the prose
reason) (the replica collection is :mod:`pipeline.milvus.metrics`' tag).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence

from aiokafka import TopicPartition

from pipeline.ingest.reasons import ReasonCode
from workers.metrics import MetricSpec

EVENTS = MetricSpec(
    "ingest_events_total",
    "counter",
    "Events fully handled (offset acknowledged), by outcome (ok, dlq) and dead-letter reason code.",
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

DLQ_SEND_ERRORS = MetricSpec(
    "ingest_dlq_send_errors_total",
    "counter",
    "Dead-letter records the broker did not acknowledge, by kind: transient (retried) or permanent "
    "(the worker stops).",
    ("topic", "kind"),
)

SPECS: tuple[MetricSpec, ...] = (EVENTS, CHUNKS, LAG, END_TO_END, DLQ_SEND_ERRORS)
"""Every metric the ingest loop records (the replica writes: :mod:`pipeline.milvus.metrics`)."""

OK = "ok"
DLQ = "dlq"
NO_REASON = "none"
"""The ``reason`` tag of events that were not dead-lettered."""
REASON_LABELS: tuple[str, ...] = (NO_REASON, *(code.value for code in ReasonCode))
"""Every value the ``reason`` tag takes: ``none`` or a :class:`~pipeline.ingest.reasons.ReasonCode`."""

_events = EVENTS.counter()
_chunks = CHUNKS.counter()
_lag = LAG.gauge()
_end_to_end = END_TO_END.histogram()
_dlq_send_errors = DLQ_SEND_ERRORS.counter()


def unit_done(topic: str, events: int, dead_letter_codes: Iterable[ReasonCode], chunks: int) -> None:
    """A unit of ``events`` was acknowledged: the dead-lettered ones counted by the code each was
    rejected with (set where it was rejected, never read from the prose), the rest as ``ok``."""
    codes = Counter(dead_letter_codes)
    dead = sum(codes.values())
    if events > dead:
        _events.inc(events - dead, tags={"topic": topic, "outcome": OK, "reason": NO_REASON})
    for code, count in codes.items():
        _events.inc(count, tags={"topic": topic, "outcome": DLQ, "reason": ReasonCode(code).value})
    if chunks:
        _chunks.inc(chunks, tags={"topic": topic})


def dlq_send_failed(topic: str, kind: str) -> None:
    """A dead-letter record sent to ``topic`` failed with an error of ``kind`` (transient, permanent)."""
    _dlq_send_errors.inc(1, tags={"topic": topic, "kind": kind})


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
