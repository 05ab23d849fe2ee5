"""What waits in a micro-batcher, whether it may wait, and which texts form the next batch.

The :class:`BatchQueue` holds the tokenized texts that :class:`~workers.batcher.MicroBatcher` accepted
and not yet handed to a forward pass.  It guarantees:

* Bounded admission: a request is refused with :class:`~workers.errors.Backpressure` at once when
  accepting it would put more than ``max_queued_tokens`` in the ingestion queue (``max_priority_tokens``
  in the query lane); a request is always accepted into an empty queue, so one larger than the bound
  still runs.  The refusal carries a retry hint: the time to drain the excess at the measured rate.
  An ingestion request may wait for room instead (:meth:`BatchQueue.wait_for_room`).
* Waiting texts are taken in arrival order, ``sort_window`` at a time; each such window is sorted by
  length (stable) and appended to a "ready" run.  Batches are cut from the front of that run, so every
  text of window *k* runs before any text of window *k + 1*: sorting cuts padding, and the bounded window
  means no text waits behind an unbounded stream of shorter ones.
* A batch grows while its cost stays within the current budget (``max_batch_tokens``, lowered for a
  while after an out-of-memory: :mod:`workers.batch_budget`): ``longest × count`` for a padded
  forward pass, the sum of the lengths for a packed one (``packed=True``, what the model says it runs).
  A single text longer than the budget runs alone.
* The first batch is due when the waiting texts hold a full budget of tokens or when the oldest of them
  has waited ``max_wait_ms``, whichever comes first.
* Queries (``priority=True``) wait in a separate bounded lane and go first into every batch, up to
  ``priority_share`` of its budget; a waiting query makes the next batch due at once.  See
  :mod:`workers.query_lane` for what that guarantees queries and ingestion.
* Texts whose caller gave up are skipped when batches form (their tokens leave the counts then).
* A batch holds texts of one LoRA adapter only (each text names one, or None for the base model).  A
  window is sorted by adapter, then length, so each adapter's texts of a window are contiguous; a batch
  ends where the adapter changes.  Led by a query, a batch takes that query's adapter; when the next
  query and the next ingestion text name different adapters, batches led by queries and batches led
  by ingestion alternate, so neither waits more than one batch of the other for its adapter's turn.
  Without adapters (all None) batches form exactly as described above.

Not thread-safe: used from the batcher's event loop only.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from typing import Generic

from workers.batch_budget import BatchBudget
from workers.errors import Backpressure
from workers.query_lane import ItemT, QueryLane
from workers.settings import BatchSettings
from workers.wakeup import Wakeup

# Bounds of the retry hint handed out with Backpressure: a slow first estimate must not park callers.
_MIN_RETRY_S = 0.01
_MAX_RETRY_S = 5.0
_UNMEASURED_RETRY_S = 0.1


class BatchQueue(Generic[ItemT]):
    """The ingestion queue (arrival order, then sorted windows) and the query lane; see the module."""

    def __init__(self, settings: BatchSettings, *, packed: bool = False) -> None:
        self._settings = settings
        self._packed = packed
        self.budget = BatchBudget(settings.max_batch_tokens)
        """The token budget batches are cut to (lowered after an out-of-memory)."""
        self._max_wait = settings.max_wait_ms / 1000
        self._pending: deque[ItemT] = deque()  # arrival order, not yet in a sorted window
        self._ready: deque[ItemT] = deque()  # sorted windows, front is next
        self._queries: QueryLane[ItemT] = QueryLane(settings.max_priority_tokens)
        self._ready_since = math.inf  # arrival time of the oldest text in `_ready` (or older)
        self._waiting_tokens = 0
        self._room_opened = Wakeup()  # notified when texts leave the queue
        self._query_led = False  # whether the last batch was led by a query (to alternate adapters)
        self.rejected = 0
        """Requests refused with Backpressure since creation."""
        self.room_waiters = 0
        """Requests in :meth:`wait_for_room` now."""

    @property
    def texts(self) -> int:
        """Texts waiting (abandoned ones included until dropped)."""
        return len(self._pending) + len(self._ready) + len(self._queries)

    @property
    def tokens(self) -> int:
        """Tokens of the texts waiting (abandoned ones included until dropped)."""
        return self._waiting_tokens + self._queries.tokens

    def empty(self) -> bool:
        return not self._pending and not self._ready and not self._queries

    def admit(self, tokens: int, priority: bool, rate: float) -> None:
        """Raise :class:`Backpressure` if a request of ``tokens`` breaks its bound (module docstring).

        ``rate`` is the measured throughput (tokens per second, 0 if unmeasured), for the retry hint.
        """
        if priority and self._queries.overflows(tokens):
            self.rejected += 1
            limit = self._settings.max_priority_tokens
            raise Backpressure(
                f"query lane holds {self._queries.tokens} tokens; {tokens} more exceed {limit}",
                retry_after=_retry_after(self._queries.tokens + tokens - limit, rate),
            )
        limit = self._settings.max_queued_tokens
        if not priority and not self.fits(tokens):
            self.rejected += 1
            raise Backpressure(
                f"embedder queue holds {self._waiting_tokens} tokens; {tokens} more exceed {limit}",
                retry_after=_retry_after(self._waiting_tokens + tokens - limit, rate),
            )

    def refusal(self, reason: str, rate: float) -> Backpressure:
        """Backpressure for an ingestion request refused for ``reason`` before its size is known (counted
        as rejected); come back after about one forward pass of the budget at ``rate``."""
        self.rejected += 1
        hint = _retry_after(self.budget.current, rate)
        return Backpressure(f"embedder queue holds {self._waiting_tokens} tokens; {reason}", retry_after=hint)

    def fits(self, tokens: int) -> bool:
        """Whether the ingestion queue admits a request of ``tokens`` now (an empty one admits any)."""
        return not self._waiting_tokens or self._waiting_tokens + tokens <= self._settings.max_queued_tokens

    async def wait_for_room(self, tokens: int) -> None:
        """Return once a request of ``tokens`` :meth:`fits` the ingestion queue: waiters are woken, in
        the order they came, whenever texts leave it (:meth:`take_batch`, :meth:`drain`)."""
        self.room_waiters += 1
        try:
            while not self.fits(tokens):
                await self._room_opened.wait()
        finally:
            self.room_waiters -= 1

    def _open_room(self) -> None:
        self._room_opened.notify()

    def add(self, items: Iterable[ItemT], tokens: int, priority: bool) -> None:
        """Queue the texts of one admitted request (``tokens`` in all)."""
        if priority:
            self._queries.extend(items)
        else:
            self._pending.extend(items)
            self._waiting_tokens += tokens

    def due_in(self, now: float) -> float | None:
        """Seconds until the next batch is due (0 or less: now), or None when nothing live is left.

        Drops abandoned queries from the front of the lane.  Call only when not :meth:`empty`.
        """
        # A waiting query does not wait for the batch to fill: someone is waiting on it.
        if self._queries.next_live() is not None or self._waiting_tokens >= self.budget.current:
            return 0.0
        if not self._pending and not self._ready:
            return None  # only abandoned queries were left, and next_live() dropped them
        oldest = self._ready_since if self._ready else self._pending[0].enqueued
        return oldest + self._max_wait - now

    def take_batch(self) -> list[ItemT]:
        """Queries first (up to their share of the budget), then the front of the sorted ingestion
        run, sealing new windows as needed; queries again if ingestion left room.  All of one adapter:
        see the module docstring for which."""
        budget = self.budget.current
        batch: list[ItemT] = []
        longest = total = 0

        def fits(item: ItemT) -> bool:
            size = len(item.ids)
            cost = total + size if self._packed else max(longest, size) * (len(batch) + 1)
            return not batch or cost <= budget

        def add(item: ItemT) -> None:
            nonlocal longest, total
            batch.append(item)
            longest, total = max(longest, len(item.ids)), total + len(item.ids)

        def next_query() -> ItemT | None:
            query = self._queries.next_live()
            return query if query is not None and query.adapter == adapter else None

        head, query = self._ingestion_head(), self._queries.next_live()
        led_by_query = query is not None and (
            head is None or head.adapter == query.adapter or not self._query_led
        )
        adapter = query.adapter if led_by_query and query is not None else head.adapter if head else None
        self._query_led = led_by_query
        query_budget = self._settings.priority_share * budget
        while (query := next_query()) is not None and fits(query):
            if batch and total + len(query.ids) > query_budget:
                break
            add(self._queries.pop())
        while (item := self._ingestion_head()) is not None and item.adapter == adapter and fits(item):
            self._ready.popleft()
            self._waiting_tokens -= len(item.ids)
            add(item)
        if not self._ready:
            self._ready_since = math.inf
        if not self._ready or self._ready[0].adapter != adapter:
            # Ingestion of this adapter left room: more queries of it may take it.
            while (query := next_query()) is not None and fits(query):
                add(self._queries.pop())
        self._open_room()
        return batch

    def _ingestion_head(self) -> ItemT | None:
        """The next live ingestion text (abandoned ones in front dropped, windows sealed), or None."""
        while True:
            if not self._ready:
                if not self._pending:
                    return None
                self._seal_window()
                continue
            item = self._ready[0]
            if not item.abandoned():
                return item
            self._ready.popleft()
            self._waiting_tokens -= len(item.ids)

    def _seal_window(self) -> None:
        count = min(self._settings.sort_window, len(self._pending))
        window = [self._pending.popleft() for _ in range(count)]
        self._ready_since = min(self._ready_since, window[0].enqueued)
        self._ready.extend(sorted(window, key=lambda item: (item.adapter or "", len(item.ids))))

    def drain(self) -> list[ItemT]:
        """Remove and return every waiting text."""
        items = [*self._ready, *self._pending, *self._queries.drain()]
        self._ready, self._pending = deque(), deque()
        self._waiting_tokens = 0
        self._open_room()
        return items


def _retry_after(excess_tokens: int, rate: float) -> float:
    """Seconds until the queue has drained ``excess_tokens`` at ``rate`` tokens per second."""
    if not rate:
        return _UNMEASURED_RETRY_S
    return min(_MAX_RETRY_S, max(_MIN_RETRY_S, excess_tokens / rate))
