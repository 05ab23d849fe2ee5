"""When the consumer stops fetching: the in-flight budget and sink outages.

The poll loop never waits on downstream work, so it needs an explicit rule for when to stop
fetching more.  :class:`FlowControl` pauses every assigned partition while the tokens in
flight exceed the in-flight budget or while a write to Milvus is being retried (an outage:
fetching more would only pile up work that cannot be written), and resumes them once both have
cleared.  Paused partitions keep the consumer in its group: the loop goes on polling, it just
receives nothing.  :func:`~pipeline.ingest.retry.retry_transient` tells the flow control while a
write is failing.

The budget is ``consumer.max_inflight_tokens`` when set.  Unset (the default) it is
``consumer.inflight_seconds`` of the tokens/s this member's units were written at while it had
units in flight (:class:`ThroughputMeter`), between :data:`ADAPTIVE_MIN_TOKENS` and
:data:`ADAPTIVE_MAX_TOKENS`: what keeps a GPU busy differs a hundredfold between a CPU and an
H200 (524,288 tokens left an H200's 0.6B idle almost a quarter of the time, 2,097,152 did not:
tests/perf/results/README.md), and a fixed figure is wrong for one of them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Protocol

from aiokafka import TopicPartition

from pipeline.settings.ingest import ADAPTIVE_MAX_TOKENS, ADAPTIVE_MIN_TOKENS, UNMEASURED_POLL_RECORDS

log = logging.getLogger(__name__)

RATE_HORIZON_S = 5.0
"""The meter forgets a unit written this many seconds (of busy time) ago by a factor of e."""
RATE_EVIDENCE_S = 1.0
"""Busy seconds the meter must have seen before its rate moves the budget."""
_PER_EVENT_WEIGHT = 0.2  # of the latest unit in the running estimate of tokens per event


class ThroughputMeter:
    """Tokens/s of the units written, over the time units were in flight, exponentially weighted.

    Guarantees: idle time (no unit in flight) changes neither the rate nor its evidence, so a quiet
    topic does not shrink the budget; the rate is None until units were in flight for
    :data:`RATE_EVIDENCE_S` (weighted); a unit written ``RATE_HORIZON_S`` busy seconds ago counts
    ``1/e`` of one written now.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last = clock()
        self._tokens = 0.0  # written, weighted
        self._busy = 0.0  # seconds with units in flight, weighted

    def advance(self, in_flight: bool) -> None:
        """Account the time since the last call, during which units were ``in_flight`` or not."""
        now = self._clock()
        elapsed, self._last = now - self._last, now
        if in_flight and elapsed > 0:
            decay = math.exp(-elapsed / RATE_HORIZON_S)
            self._tokens *= decay
            self._busy = self._busy * decay + elapsed

    def written(self, tokens: int) -> None:
        """A unit of ``tokens`` was written (call :meth:`advance` first)."""
        self._tokens += tokens

    def rate(self) -> float | None:
        """Tokens/s while busy, or None without enough evidence yet."""
        return self._tokens / self._busy if self._busy >= RATE_EVIDENCE_S else None


class Pausable(Protocol):
    """What FlowControl needs from the consumer (aiokafka's AIOKafkaConsumer)."""

    def assignment(self) -> set[TopicPartition]: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...


class FlowControl:
    """In-flight accounting and the pause/resume decision of one consumer.

    Guarantees: while :attr:`paused`, no assigned partition fetches; partitions resume only
    when the tokens in flight are under half the budget (hysteresis) and no write is failing; the
    budget is ``max_inflight_tokens`` when given, else ``inflight_seconds`` of the measured rate
    clamped to ``[ADAPTIVE_MIN_TOKENS, ADAPTIVE_MAX_TOKENS]`` (the floor until a rate is known).
    """

    def __init__(
        self,
        max_inflight_tokens: int | None,
        inflight_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fixed = max_inflight_tokens
        self._seconds = inflight_seconds
        self.meter = ThroughputMeter(clock)
        self.tokens = 0
        self.units = 0
        self._failing_writes = 0
        self._tokens_per_event: float | None = None  # weighted over the units chunked
        self.paused = False
        self.largest_budget = self.budget
        """The largest budget so far (for reports)."""

    @property
    def budget(self) -> int:
        """Tokens in flight above which partitions pause, now."""
        if self._fixed is not None:
            return self._fixed
        rate = self.meter.rate()
        if rate is None:
            return ADAPTIVE_MIN_TOKENS
        return int(min(ADAPTIVE_MAX_TOKENS, max(ADAPTIVE_MIN_TOKENS, rate * self._seconds)))

    @property
    def sink_failing(self) -> bool:
        """Some write is being retried after a transient sink failure."""
        return self._failing_writes > 0

    def dispatched(self, tokens: int) -> None:
        """A unit of ``tokens`` tokens went in flight (0 while it is still being chunked: see
        :meth:`chunked`)."""
        self.meter.advance(self.units > 0)
        self.tokens += tokens
        self.units += 1

    def chunked(self, tokens: int, events: int = 0) -> None:
        """A unit of ``events`` events dispatched before it was chunked turned out to hold ``tokens``
        tokens."""
        self.tokens += tokens
        if events > 0:
            per_event = tokens / events
            self._tokens_per_event = (
                per_event
                if self._tokens_per_event is None
                else (1 - _PER_EVENT_WEIGHT) * self._tokens_per_event + _PER_EVENT_WEIGHT * per_event
            )

    def records_wanted(self, most: int) -> int:
        """How many records the next poll should return, at most ``most``: about what fills the budget's
        headroom at the tokens an event has held so far (:data:`UNMEASURED_POLL_RECORDS` before any
        unit was chunked; at least 1).  A poll's records are all dispatched before the budget is
        checked again, so without this one poll of long documents could pass the budget several
        times over."""
        if self._tokens_per_event is None or self._tokens_per_event <= 0:
            return min(most, UNMEASURED_POLL_RECORDS)
        headroom = self.budget - self.tokens
        return max(1, min(most, math.ceil(headroom / self._tokens_per_event)))

    def released(self, tokens: int, *, written: bool = True) -> None:
        """A unit dispatched with ``tokens`` tokens left: ``written``, or dropped (a revocation, a
        stop), which the rate does not count."""
        self.meter.advance(self.units > 0)
        if written:
            self.meter.written(tokens)
        self.tokens -= tokens
        self.units -= 1

    def write_failing(self) -> None:
        self._failing_writes += 1

    def write_recovered(self) -> None:
        self._failing_writes -= 1

    def reassigned(self) -> None:
        """A rebalance handed out partitions, which start unpaused."""
        self.paused = False

    def apply(self, consumer: Pausable) -> None:
        """Pause or resume every assigned partition as the rule above says."""
        assigned = consumer.assignment()
        budget = self.budget
        self.largest_budget = max(self.largest_budget, budget)
        if not self.paused and (self.tokens >= budget or self.sink_failing):
            consumer.pause(*assigned)
            self.paused = True
            why = (
                "the sink is failing" if self.sink_failing else f"{self.tokens} tokens in flight of {budget}"
            )
            log.info("paused %d partitions: %s", len(assigned), why)
        elif self.paused and self.tokens < budget // 2 and not self.sink_failing:
            consumer.resume(*assigned)
            self.paused = False
            log.info("resumed partitions: %d tokens in flight", self.tokens)
