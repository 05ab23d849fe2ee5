"""Token-budget micro-batching of tokenized texts inside one embedder actor.

Many concurrent :meth:`MicroBatcher.submit` calls share forward passes.  How a batch forms:

* Waiting texts are taken in arrival order, ``sort_window`` at a time; each such window is sorted by
  length (stable) and appended to a "ready" run.  Batches are cut from the front of that run, so every
  text of window *k* runs before any text of window *k + 1*: sorting cuts padding, and the bounded window
  means no text waits behind an unbounded stream of shorter ones.
* A batch grows while its cost stays within ``max_batch_tokens``: ``longest × count`` for a padded
  forward pass, the sum of the lengths for a packed one (``packed=True``, what the model says it runs).
  A single text longer than the budget runs alone.
* The first batch starts when the waiting texts hold a full budget of tokens or when the oldest of them
  has waited ``max_wait_ms``, whichever comes first.
* Queries (``submit(..., priority=True)``) wait in a separate bounded lane and go first into every
  batch, up to ``priority_share`` of its budget; a waiting query starts the next batch at once.  See
  :mod:`workers.query_lane` for what that guarantees queries and ingestion.
* Requests may ask for different dimension sets: a batch is run once for the union of its requests' dims
  and each request keeps its own (the forward pass is the same; only the cheap cut + normalize repeats).

The forward pass runs on one dedicated thread, one batch at a time, so the event loop keeps accepting
calls while the accelerator works.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from workers.errors import Backpressure, EmbedderUnavailable, PipelineError
from workers.query_lane import QueryLane
from workers.settings import BatchSettings

log = logging.getLogger(__name__)

RunBatch = Callable[[list[Sequence[int]], tuple[int, ...]], Mapping[int, np.ndarray]]
"""``run_batch(ids, dims)`` → ``{dim: float32 array (len(ids), dim)}``, rows in the order of ``ids``."""

OnBatch = Callable[[int, int, float], None]
"""``on_batch(tokens, padded_tokens, seconds)`` after each successful forward pass (metrics hook)."""

# Bounds of the retry hint handed out with Backpressure: a slow first estimate must not park callers.
_MIN_RETRY_S = 0.01
_MAX_RETRY_S = 5.0
_UNMEASURED_RETRY_S = 0.1
_RATE_SMOOTHING = 0.2


@dataclass(frozen=True)
class BatcherStats:
    """A snapshot of one batcher's counters (totals since it was created; failed batches counted apart)."""

    queued_texts: int
    queued_tokens: int
    batches: int
    texts: int
    tokens: int
    padded_tokens: int
    """Tokens the forward passes computed, padding included (equal to ``tokens`` when packed)."""
    failed_batches: int
    rejected_requests: int
    forward_seconds: float
    mean_fill: float
    """Mean of ``padded tokens / max_batch_tokens`` over batches (capped at 1 per batch)."""
    padding_efficiency: float
    """``tokens / padded_tokens``: 1.0 means no padding at all."""
    tokens_per_second: float
    """Smoothed throughput of the forward passes (real tokens per second of forward time)."""


@dataclass(eq=False)
class _Request:
    dims: tuple[int, ...]
    future: asyncio.Future[dict[int, np.ndarray]]
    out: dict[int, np.ndarray]
    remaining: int

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)


@dataclass(eq=False, slots=True)
class _Item:
    request: _Request
    row: int
    ids: Sequence[int]
    enqueued: float

    def abandoned(self) -> bool:
        """The caller gave up, or another text of its request failed."""
        return self.request.future.done()


def _chained(error: PipelineError, cause: BaseException) -> PipelineError:
    error.__cause__ = cause
    return error


class MicroBatcher:
    """Merges concurrent submits into token-budgeted forward passes; see the module docstring.

    Guarantees: results come back in input order; a failing forward pass fails exactly the requests
    with a text in that batch; the loop task is supervised, so if it ever dies every pending and
    future submit raises instead of hanging.  Not thread-safe: use it from one event loop.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        settings: BatchSettings,
        *,
        packed: bool = False,
        on_batch: OnBatch | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._on_batch = on_batch
        self._packed = packed
        self._settings = settings
        self._max_wait = settings.max_wait_ms / 1000
        self._pending: deque[_Item] = deque()  # arrival order, not yet in a sorted window
        self._ready: deque[_Item] = deque()  # sorted windows, front is next
        self._queries: QueryLane[_Item] = QueryLane(settings.max_priority_tokens)
        self._ready_since = math.inf  # arrival time of the oldest text in `_ready` (or older)
        self._running: list[_Item] = []
        self._waiting_tokens = 0
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-forward")
        self._task: asyncio.Task[None] | None = None
        self._stopped: Callable[[], PipelineError] | None = None  # builds the error once stopped
        self._batches = self._texts = self._tokens = self._padded = 0
        self._failed = self._rejected = 0
        self._forward_s = self._fill_sum = 0.0
        self._rate = 0.0

    async def submit(
        self, ids: Sequence[Sequence[int]], dims: tuple[int, ...], *, priority: bool = False
    ) -> dict[int, np.ndarray]:
        """Embed tokenized texts; returns ``{dim: float32 (len(ids), dim)}`` with rows in input order.

        ``priority=True`` puts them in the query lane (module docstring) instead of the ingestion queue.
        Raises :class:`Backpressure` at once when accepting ``ids`` would put more than
        ``max_queued_tokens`` in the queue (``max_priority_tokens`` in the lane; a request is always
        accepted into an empty queue, so one larger than the bound still runs).
        Raises :class:`PipelineError` (chained to the cause) when
        its forward pass fails or the batcher stopped, :class:`EmbedderUnavailable` once closed.
        """
        if self._stopped is not None:
            raise self._stopped()
        if not dims:
            raise ValueError("submit needs at least one dimension")
        if not ids:
            return {dim: np.empty((0, dim), dtype=np.float32) for dim in dims}
        tokens = sum(len(seq) for seq in ids)
        if priority and self._queries.overflows(tokens):
            self._rejected += 1
            limit = self._settings.max_priority_tokens
            raise Backpressure(
                f"query lane holds {self._queries.tokens} tokens; {tokens} more exceed {limit}",
                retry_after=self._retry_after(self._queries.tokens + tokens - limit),
            )
        limit = self._settings.max_queued_tokens
        if not priority and self._waiting_tokens and self._waiting_tokens + tokens > limit:
            self._rejected += 1
            raise Backpressure(
                f"embedder queue holds {self._waiting_tokens} tokens; {tokens} more exceed {limit}",
                retry_after=self._retry_after(self._waiting_tokens + tokens - limit),
            )
        loop = asyncio.get_running_loop()
        if self._task is None:
            # Started lazily: the owner (a Ray actor's __init__) may run before its event loop does.
            self._task = loop.create_task(self._loop(), name="micro-batcher")
            self._task.add_done_callback(self._on_loop_done)
        request = _Request(
            dims=dims,
            future=loop.create_future(),
            out={dim: np.empty((len(ids), dim), dtype=np.float32) for dim in dims},
            remaining=len(ids),
        )
        now = loop.time()
        items = (_Item(request, row, seq, now) for row, seq in enumerate(ids))
        if priority:
            self._queries.extend(items)
        else:
            self._pending.extend(items)
            self._waiting_tokens += tokens
        self._arrived.set()
        # A cancelled caller cancels the future; its texts are then skipped when batches form.
        return await request.future

    def stats(self) -> BatcherStats:
        """Counters since creation; ``queued_*`` still count texts of callers that gave up, until dropped."""
        return BatcherStats(
            queued_texts=len(self._pending) + len(self._ready) + len(self._queries),
            queued_tokens=self._waiting_tokens + self._queries.tokens,
            batches=self._batches,
            texts=self._texts,
            tokens=self._tokens,
            padded_tokens=self._padded,
            failed_batches=self._failed,
            rejected_requests=self._rejected,
            forward_seconds=self._forward_s,
            mean_fill=self._fill_sum / self._batches if self._batches else 0.0,
            padding_efficiency=self._tokens / self._padded if self._padded else 1.0,
            tokens_per_second=self._rate,
        )

    async def close(self) -> None:
        """Stop the loop, fail every waiting request with EmbedderUnavailable, release the thread.

        A forward pass already on the thread finishes there, but nobody waits for it.
        """
        if self._stopped is None:
            self._stopped = lambda: EmbedderUnavailable("the micro-batcher is closed")
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task])  # a crash was already reported by _on_loop_done
        self._fail_all()
        self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the loop ---------------------------------------------------------------------------------

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending and not self._ready and not self._queries:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            # A waiting query does not wait for the batch to fill: someone is waiting on it.
            if self._queries.next_live() is None and self._waiting_tokens < self._settings.max_batch_tokens:
                if not self._pending and not self._ready:
                    continue  # only abandoned queries were left, and next_live() dropped them
                oldest = self._ready_since if self._ready else self._pending[0].enqueued
                delay = oldest + self._max_wait - loop.time()
                if delay > 0:
                    self._arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._arrived.wait()
                    continue
            batch = self._take_batch()
            if batch:
                await self._execute(batch)

    def _take_batch(self) -> list[_Item]:
        """Queries first (up to their share of the budget), then the front of the sorted ingestion
        run, sealing new windows as needed; queries again if ingestion left room."""
        budget = self._settings.max_batch_tokens
        batch: list[_Item] = []
        longest = total = 0

        def fits(item: _Item) -> bool:
            size = len(item.ids)
            cost = total + size if self._packed else max(longest, size) * (len(batch) + 1)
            return not batch or cost <= budget

        def add(item: _Item) -> None:
            nonlocal longest, total
            batch.append(item)
            longest, total = max(longest, len(item.ids)), total + len(item.ids)

        query_budget = self._settings.priority_share * budget
        while (query := self._queries.next_live()) is not None and fits(query):
            if batch and total + len(query.ids) > query_budget:
                break
            add(self._queries.pop())
        while True:
            if not self._ready:
                if not self._pending:
                    break
                self._seal_window()
                continue
            item = self._ready[0]
            size = len(item.ids)
            if item.abandoned():
                self._ready.popleft()
                self._waiting_tokens -= size
                continue
            if not fits(item):
                break
            self._ready.popleft()
            self._waiting_tokens -= size
            add(item)
        if not self._ready:
            self._ready_since = math.inf
            # Ingestion left room: more queries may take it.
            while (query := self._queries.next_live()) is not None and fits(query):
                add(self._queries.pop())
        return batch

    def _seal_window(self) -> None:
        count = min(self._settings.sort_window, len(self._pending))
        window = [self._pending.popleft() for _ in range(count)]
        self._ready_since = min(self._ready_since, window[0].enqueued)
        self._ready.extend(sorted(window, key=lambda item: len(item.ids)))

    async def _execute(self, batch: list[_Item]) -> None:
        """Run one forward pass and hand each row to its request; a failure fails only these requests."""
        loop = asyncio.get_running_loop()
        dims = tuple(sorted({dim for item in batch for dim in item.request.dims}, reverse=True))
        ids = [item.ids for item in batch]
        tokens = sum(len(seq) for seq in ids)
        padded = tokens if self._packed else max(len(seq) for seq in ids) * len(ids)
        self._running = batch  # left in place if cancelled, so that close() fails these requests too
        started = loop.time()
        try:
            out = await loop.run_in_executor(self._executor, self._run_batch, ids, dims)
            for row, item in enumerate(batch):
                request = item.request
                if request.future.done():
                    continue
                for dim in request.dims:
                    request.out[dim][item.row] = out[dim][row]
                request.remaining -= 1
                if request.remaining == 0:
                    request.future.set_result(request.out)
        except Exception as exc:
            self._running = []
            self._failed += 1
            log.warning("forward pass over %d texts (%d padded tokens) failed: %r", len(batch), padded, exc)
            for request in {item.request for item in batch}:
                request.fail(_chained(PipelineError(f"forward pass over {len(batch)} texts failed"), exc))
            return
        self._running = []
        elapsed = loop.time() - started
        self._batches += 1
        self._texts += len(batch)
        self._tokens += tokens
        self._padded += padded
        self._forward_s += elapsed
        self._fill_sum += min(1.0, padded / self._settings.max_batch_tokens)
        if self._on_batch is not None:
            self._on_batch(tokens, padded, elapsed)
        if elapsed > 0:
            rate = tokens / elapsed
            self._rate = rate if not self._rate else self._rate + _RATE_SMOOTHING * (rate - self._rate)

    # -- failure handling -------------------------------------------------------------------------

    def _on_loop_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            if self._stopped is None:  # cancelled by an event-loop shutdown rather than close()
                self._stopped = lambda: EmbedderUnavailable("the micro-batcher was cancelled")
        else:
            # The loop only ever ends by raising: a bug.  Never leave callers waiting on a dead loop.
            crash = task.exception() or RuntimeError("loop returned")
            log.error("micro-batcher loop crashed", exc_info=crash)
            self._stopped = lambda: _chained(PipelineError("the micro-batcher loop crashed"), crash)
        self._fail_all()

    def _fail_all(self) -> None:
        """Fail every request still waiting or running with the stop error (each gets its own instance)."""
        assert self._stopped is not None
        items = [*self._running, *self._ready, *self._pending, *self._queries.drain()]
        self._running, self._ready, self._pending = [], deque(), deque()
        self._waiting_tokens = 0
        for request in {item.request for item in items}:
            request.fail(self._stopped())

    def _retry_after(self, excess_tokens: int) -> float:
        """Seconds until the queue has drained ``excess_tokens`` at the measured rate."""
        if not self._rate:
            return _UNMEASURED_RETRY_S
        return min(_MAX_RETRY_S, max(_MIN_RETRY_S, excess_tokens / self._rate))
