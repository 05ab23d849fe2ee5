"""When the consumer stops fetching: the in-flight budget and sink outages.

The poll loop never waits on downstream work, so it needs an explicit rule for when to stop
fetching more.  :class:`FlowControl` pauses every assigned partition while the tokens in
flight exceed ``consumer.max_inflight_tokens`` or while a write to Milvus is being retried (an
outage: fetching more would only pile up work that cannot be written), and resumes them once
both have cleared.  Paused partitions keep the consumer in its group: the loop goes on
polling, it just receives nothing.  :func:`~pipeline.ingest.retry.retry_transient`
tells the flow control while a write is failing.
"""

from __future__ import annotations

import logging
from typing import Protocol

from aiokafka import TopicPartition

log = logging.getLogger(__name__)


class Pausable(Protocol):
    """What FlowControl needs from the consumer (aiokafka's AIOKafkaConsumer)."""

    def assignment(self) -> set[TopicPartition]: ...
    def pause(self, *partitions: TopicPartition) -> None: ...
    def resume(self, *partitions: TopicPartition) -> None: ...


class FlowControl:
    """In-flight accounting and the pause/resume decision of one consumer.

    Guarantees: while :attr:`paused`, no assigned partition fetches; partitions resume only
    when the tokens in flight are under half the budget (hysteresis) and no write is failing.
    """

    def __init__(self, max_inflight_tokens: int) -> None:
        self._limit = max_inflight_tokens
        self.tokens = 0
        self.units = 0
        self._failing_writes = 0
        self.paused = False

    @property
    def sink_failing(self) -> bool:
        """Some write is being retried after a transient sink failure."""
        return self._failing_writes > 0

    def dispatched(self, tokens: int) -> None:
        """A unit of ``tokens`` tokens went in flight (0 while it is still being chunked: see
        :meth:`chunked`)."""
        self.tokens += tokens
        self.units += 1

    def chunked(self, tokens: int) -> None:
        """A unit dispatched before it was chunked turned out to hold ``tokens`` tokens."""
        self.tokens += tokens

    def released(self, tokens: int) -> None:
        """A unit dispatched with ``tokens`` tokens left (written, or dropped on revocation)."""
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
        if not self.paused and (self.tokens >= self._limit or self.sink_failing):
            consumer.pause(*assigned)
            self.paused = True
            why = "the sink is failing" if self.sink_failing else f"{self.tokens} tokens in flight"
            log.info("paused %d partitions: %s", len(assigned), why)
        elif self.paused and self.tokens < self._limit // 2 and not self.sink_failing:
            consumer.resume(*assigned)
            self.paused = False
            log.info("resumed partitions: %d tokens in flight", self.tokens)
