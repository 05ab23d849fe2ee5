"""The query lane of the micro-batcher: search queries ride in the same forward passes as ingestion.

A query is one short text whose caller waits for it (a search, an API request); ingestion is a long
stream of chunks whose caller only needs throughput.  Both share one model, so queries are not given
a model of their own: they enter a separate bounded FIFO, and every batch the batcher cuts takes
queries first, up to ``priority_share`` of its token budget, then fills up with ingestion texts.  So:

* a query never waits behind the ingestion backlog: it rides in the next batch that has room for it
  (the batch after the one on the device at most, while the lane holds under a share's worth);
* ingestion never starves under a query flood: at least ``1 - priority_share`` of every batch's budget
  goes to ingestion texts while any are waiting (a batch with no ingestion waiting is all queries);
* the lane holds at most ``max_priority_tokens`` tokens; past that, submits are refused with the same
  typed ``Backpressure`` as the ingestion queue.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from typing import Generic, Protocol, TypeVar


class _Queued(Protocol):
    @property
    def ids(self) -> Sequence[int]: ...

    @property
    def enqueued(self) -> float: ...

    @property
    def adapter(self) -> str | None: ...

    def abandoned(self) -> bool: ...


ItemT = TypeVar("ItemT", bound=_Queued)


class QueryLane(Generic[ItemT]):
    """A bounded FIFO of query texts (see the module docstring); not thread-safe, like the batcher."""

    def __init__(self, max_tokens: int) -> None:
        self._items: deque[ItemT] = deque()
        self._max_tokens = max_tokens
        self.tokens = 0
        """Tokens of the texts waiting in the lane (abandoned ones included until dropped)."""

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[ItemT]:
        return iter(self._items)

    def overflows(self, tokens: int) -> bool:
        """Whether adding ``tokens`` breaks the bound (a request is always accepted into an empty lane)."""
        return bool(self.tokens) and self.tokens + tokens > self._max_tokens

    def extend(self, items: Iterable[ItemT]) -> None:
        for item in items:
            self._items.append(item)
            self.tokens += len(item.ids)

    def oldest(self) -> float:
        """Arrival time of the first waiting text; the lane must not be empty."""
        return self._items[0].enqueued

    def next_live(self) -> ItemT | None:
        """The first text whose caller still waits (abandoned ones in front are dropped), or None."""
        while self._items and self._items[0].abandoned():
            self.tokens -= len(self._items.popleft().ids)
        return self._items[0] if self._items else None

    def pop(self) -> ItemT:
        item = self._items.popleft()
        self.tokens -= len(item.ids)
        return item

    def drain(self) -> list[ItemT]:
        """Remove and return every waiting text."""
        items = list(self._items)
        self._items.clear()
        self.tokens = 0
        return items
