"""Token-budget micro-batching of tokenized texts inside one embedder actor.

Many concurrent :meth:`MicroBatcher.submit` calls share forward passes.  The batcher owns the life of
a request: admission, then its texts wait in a :class:`~workers.batch_queue.BatchQueue` (bounds and
backpressure, sorted windows, the token budget, when a batch is due, queries first: see
:mod:`workers.batch_queue` and :mod:`workers.query_lane`), run in forward passes, and come back.
It guarantees:

* Results come back in input order, as ``{dim: float32 (len(ids), dim)}``.
* Requests may ask for different dimension sets: a batch is run once for the union of its requests' dims
  and each request keeps its own (the forward pass is the same; only the cheap cut + normalize repeats).
* A failing forward pass fails exactly the requests with a text in that batch.
* The loop task is supervised: if it ever dies, every pending and future submit raises instead of
  hanging; after :meth:`MicroBatcher.close` every one raises :class:`~workers.errors.EmbedderUnavailable`.

The forward pass runs on one dedicated thread, one batch at a time, so the event loop keeps accepting
calls while the accelerator works.  Counters: :mod:`workers.batcher_stats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from workers.batch_queue import BatchQueue
from workers.batcher_stats import BatcherStats, ForwardCounters
from workers.errors import EmbedderUnavailable, PipelineError
from workers.settings import BatchSettings

log = logging.getLogger(__name__)

RunBatch = Callable[[list[Sequence[int]], tuple[int, ...]], Mapping[int, np.ndarray]]
"""``run_batch(ids, dims)`` → ``{dim: float32 array (len(ids), dim)}``, rows in the order of ``ids``."""

OnBatch = Callable[[int, int, float], None]
"""``on_batch(tokens, padded_tokens, seconds)`` after each successful forward pass (metrics hook)."""


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

    Not thread-safe: use it from one event loop.
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
        self._queue: BatchQueue[_Item] = BatchQueue(settings, packed=packed)
        self._running: list[_Item] = []
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-forward")
        self._task: asyncio.Task[None] | None = None
        self._stopped: Callable[[], PipelineError] | None = None  # builds the error once stopped
        self._counters = ForwardCounters(settings.max_batch_tokens)

    async def submit(
        self, ids: Sequence[Sequence[int]], dims: tuple[int, ...], *, priority: bool = False
    ) -> dict[int, np.ndarray]:
        """Embed tokenized texts; returns ``{dim: float32 (len(ids), dim)}`` with rows in input order.

        ``priority=True`` puts them in the query lane (:mod:`workers.query_lane`) instead of the
        ingestion queue.  Raises :class:`~workers.errors.Backpressure` at once when accepting ``ids``
        would put more than ``max_queued_tokens`` in the queue (``max_priority_tokens`` in the lane; a
        request is always accepted into an empty queue, so one larger than the bound still runs).
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
        self._queue.admit(tokens, priority, self._counters.rate)
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
        self._queue.add((_Item(request, row, seq, now) for row, seq in enumerate(ids)), tokens, priority)
        self._arrived.set()
        # A cancelled caller cancels the future; its texts are then skipped when batches form.
        return await request.future

    def stats(self) -> BatcherStats:
        """Counters since creation; ``queued_*`` still count texts of callers that gave up, until dropped."""
        return self._counters.snapshot(self._queue.texts, self._queue.tokens, self._queue.rejected)

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
            if self._queue.empty():
                self._arrived.clear()
                await self._arrived.wait()
                continue
            delay = self._queue.due_in(loop.time())
            if delay is None:
                continue  # only abandoned queries were left, and they were dropped
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
        """The next batch, cut by the queue (module :mod:`workers.batch_queue`)."""
        return self._queue.take_batch()

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
            self._counters.failed += 1
            log.warning("forward pass over %d texts (%d padded tokens) failed: %r", len(batch), padded, exc)
            for request in {item.request for item in batch}:
                request.fail(_chained(PipelineError(f"forward pass over {len(batch)} texts failed"), exc))
            return
        self._running = []
        elapsed = loop.time() - started
        self._counters.record(len(batch), tokens, padded, elapsed)
        if self._on_batch is not None:
            self._on_batch(tokens, padded, elapsed)

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
        items = [*self._running, *self._queue.drain()]
        self._running = []
        for request in {item.request for item in items}:
            request.fail(self._stopped())
