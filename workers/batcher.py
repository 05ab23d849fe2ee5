"""Token-budget micro-batching of tokenized texts inside one embedder actor.

Many concurrent :meth:`MicroBatcher.submit` calls share forward passes.  The batcher owns the life of
a request: admission, then its texts wait in a :class:`~workers.batch_queue.BatchQueue` (bounds and
backpressure, sorted windows, the token budget, when a batch is due, queries first: see
:mod:`workers.batch_queue` and :mod:`workers.query_lane`), run in forward passes, and come back.
It guarantees:

* Results come back in input order, as ``{dim: float32 (len(ids), dim)}``.
* A batch never mixes LoRA adapters: each request names one (or none, the base model) and its texts
  run only in batches of that adapter (:mod:`workers.batch_queue` groups them).
* Requests may ask for different dimension sets: a batch is run once for the union of its requests' dims
  and each request keeps its own (the forward pass is the same; only the cheap cut + normalize repeats).
* A failing forward pass fails no request on the spot (:mod:`workers.batch_failures`): the batch is
  split in halves and each half runs again, recursively, down to single texts.  An out-of-memory also
  lowers the token budget (:mod:`workers.batch_budget`): later batches are cut to it, and a half still
  over it is halved again before it runs.  A text that still fails alone fails its request
  with :class:`~workers.errors.FailedInputs` naming it and the reason, once the request's other texts
  ran; every other text of every request gets its vector.  When a ``probe`` is given, a text is only
  blamed once the probe (a forward pass over a known-good input) succeeds right after: if the probe
  fails too, the model is broken, not the text, and the batcher stops (``on_broken`` is called).
* An ingestion request that does not fit the queue is refused at once, or with ``wait_for_room`` waits
  until it does (the embedder actor holds a bounded number of requests so: :mod:`workers.actor_base`).
* The loop task is supervised: if it ever dies, every pending and future submit raises instead of
  hanging; after :meth:`MicroBatcher.close` every one raises :class:`~workers.errors.EmbedderUnavailable`.

The forward passes run on one dedicated thread, so the event loop keeps accepting calls meanwhile.
Given ``launch_batch``, up to ``batches_in_flight`` passes are queued at once (:mod:`workers.batch_launches`);
a failure is handled once the passes queued before it are read back, with nothing else in flight (its
halves run one at a time).  Counters: :mod:`workers.batcher_stats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import numpy as np

from workers.batch_budget import forward_cost
from workers.batch_failures import FailedPasses, OnFailure
from workers.batch_items import Item, Request, forward_args
from workers.batch_launches import LaunchBatch, LaunchedPasses
from workers.batch_queue import BatchQueue
from workers.batcher_stats import BatcherStats, ForwardCounters
from workers.errors import Backpressure, EmbedderUnavailable, PipelineError, chained
from workers.settings import BatchSettings

log = logging.getLogger(__name__)

RunBatch = Callable[[list[Sequence[int]], tuple[int, ...], str | None], Mapping[int, np.ndarray]]
"""``run_batch(ids, dims, adapter)`` → ``{dim: float32 array (len(ids), dim)}``, rows in the order of
``ids``, computed with LoRA adapter ``adapter`` (None: the base model)."""

OnBatch = Callable[[int, int, float], None]
"""``on_batch(tokens, padded_tokens, seconds)`` after each successful forward pass (metrics hook)."""


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
        launch_batch: LaunchBatch | None = None,
        on_batch: OnBatch | None = None,
        on_failure: OnFailure | None = None,
        probe: Callable[[], object] | None = None,
        on_broken: Callable[[BaseException], None] | None = None,
    ) -> None:
        """``probe`` runs a forward pass over a known-good input (raising if it fails); ``on_broken``
        is called with its error when it fails after a text failed alone (see the module docstring).
        ``launch_batch``: the same model as ``run_batch``, split in two (see the module docstring)."""
        self._run_batch = run_batch
        self._launch_batch = launch_batch if settings.batches_in_flight > 1 else None
        self._on_batch = on_batch
        self._on_broken = on_broken
        self._packed = packed
        self._queue: BatchQueue[Item] = BatchQueue(settings, packed=packed)
        self._held: list[list[Item]] = []  # batches being run outside the queue and self._launched
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-forward")
        self._launched = LaunchedPasses(settings.batches_in_flight, self._arrived.set)
        self._task: asyncio.Task[None] | None = None
        self._stopped: Callable[[], PipelineError] | None = None  # builds the error once stopped
        self._counters = ForwardCounters(settings.max_batch_tokens)
        self._budget = self._queue.budget
        run_probe = None if probe is None else partial(self._on_forward_thread, probe)
        self._failures = FailedPasses(
            self._budget,
            self._counters,
            run=self._run,
            run_probe=run_probe,
            broken=self._broken,
            on_failure=on_failure,
        )

    async def submit(
        self,
        ids: Sequence[Sequence[int]],
        dims: tuple[int, ...],
        *,
        priority: bool = False,
        adapter: str | None = None,
        wait_for_room: bool = False,
    ) -> dict[int, np.ndarray]:
        """Embed tokenized texts; returns ``{dim: float32 (len(ids), dim)}`` with rows in input order.

        ``adapter``: the LoRA adapter they run with (handed to ``run_batch``; a batch never mixes two).

        ``priority=True`` puts them in the query lane (:mod:`workers.query_lane`) instead of the
        ingestion queue.  Raises :class:`~workers.errors.Backpressure` at once when accepting ``ids``
        would put more than ``max_queued_tokens`` in the queue (``max_priority_tokens`` in the lane; a
        request is always accepted into an empty queue, so one larger than the bound still runs);
        with ``wait_for_room`` an ingestion request waits until it fits instead.  Raises
        :class:`~workers.errors.FailedInputs` naming the texts the model fails on even alone (the
        others ran), :class:`PipelineError` (chained to the cause) when the batcher stopped,
        :class:`EmbedderUnavailable` once closed or when the model is broken.
        """
        if self._stopped is not None:
            raise self._stopped()
        if not dims:
            raise ValueError("submit needs at least one dimension")
        if not ids:
            return {dim: np.empty((0, dim), dtype=np.float32) for dim in dims}
        tokens = sum(len(seq) for seq in ids)
        if wait_for_room and not priority:
            await self._queue.wait_for_room(tokens)  # the queue is emptied when the batcher stops
            if self._stopped is not None:
                raise self._stopped()
        self._queue.admit(tokens, priority, self._counters.rate)
        loop = asyncio.get_running_loop()
        if self._task is None:
            # Started lazily: the owner (a Ray actor's __init__) may run before its event loop does.
            self._task = loop.create_task(self._loop(), name="micro-batcher")
            self._task.add_done_callback(self._on_loop_done)
        request = Request(
            dims=dims,
            future=loop.create_future(),
            out={dim: np.empty((len(ids), dim), dtype=np.float32) for dim in dims},
            remaining=len(ids),
            adapter=adapter,
        )
        now = loop.time()
        self._queue.add((Item(request, row, seq, now) for row, seq in enumerate(ids)), tokens, priority)
        self._arrived.set()
        # A cancelled caller cancels the future; its texts are then skipped when batches form.
        return await request.future

    def refusal(self, reason: str) -> Backpressure:
        """The Backpressure to raise for an ingestion request refused for ``reason`` before it was
        tokenized (it counts in ``rejected_requests``)."""
        return self._queue.refusal(reason, self._counters.rate)

    def stats(self) -> BatcherStats:
        """Counters since creation; ``queued_*`` still count texts of callers that gave up, until dropped."""
        return self._counters.snapshot(
            self._queue.texts,
            self._queue.tokens,
            self._queue.rejected,
            self._queue.room_waiters,
            self._budget.current,
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
        self._launched.shutdown()

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._launched.oldest_due():
                await self._finish_oldest()
                continue
            if self._queue.empty():
                await self._wait_for_work(None)
                continue
            delay = self._queue.due_in(loop.time())
            if delay is None:
                continue  # only abandoned queries were left, and they were dropped
            if delay > 0:
                await self._wait_for_work(delay)
                continue
            batch = self._take_batch()
            if batch:
                await self._execute(batch)

    async def _wait_for_work(self, delay: float | None) -> None:
        """Until texts arrive, ``delay`` seconds pass, or a launched batch's results are back."""
        self._arrived.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._arrived.wait()

    def _take_batch(self) -> list[Item]:
        """The next batch, cut by the queue (module :mod:`workers.batch_queue`)."""
        return self._queue.take_batch()

    async def _execute(self, batch: list[Item]) -> None:
        """Run ``batch``, splitting it on failure; hand each row to its request (module docstring)."""
        # Held while it is handled outside the queue, and left held if cancelled: close() fails it too.
        self._held.append(batch)
        if self._launch_batch is None:
            await self._run(batch)
        else:
            await self._launch(batch, self._launch_batch)
        self._release(batch)

    def _release(self, batch: list[Item]) -> None:
        if self._held and self._held[-1] is batch:  # nothing is held any more once the batcher stopped
            self._held.pop()

    async def _launch(self, batch: list[Item], launch_batch: LaunchBatch) -> None:
        """Queue ``batch``'s forward pass; its results are handed out by :meth:`_finish_oldest`."""
        batch = [item for item in batch if not item.abandoned()]
        if not batch or self._stopped is not None:
            return
        loop = asyncio.get_running_loop()
        dims, ids, adapter = forward_args(batch)
        tokens, padded = sum(len(seq) for seq in ids), forward_cost(ids, self._packed)
        started = loop.time()
        try:
            wait = await loop.run_in_executor(self._executor, launch_batch, ids, dims, adapter)
        except Exception as exc:
            await self._finish_launched()  # a failure is handled with nothing else in flight
            await self._failures.handle(batch, padded, exc)
            return
        self._launched.add(batch, tokens, padded, started, wait)

    async def _finish_oldest(self) -> None:
        """Wait for the oldest launched batch's results and hand them out (or handle its failure)."""
        launched = self._launched.oldest()
        try:
            out = await launched.results
        except Exception as exc:
            self._launched.pop_oldest()
            self._held.append(launched.batch)
            await self._finish_launched()
            await self._failures.handle(launched.batch, launched.padded, exc)
            self._release(launched.batch)
            return
        self._launched.pop_oldest()
        elapsed = self._launched.device_seconds(launched.started, asyncio.get_running_loop().time())
        self._deliver(launched.batch, out, launched.tokens, launched.padded, elapsed)

    async def _finish_launched(self) -> None:
        while self._launched:
            await self._finish_oldest()

    async def _run(self, batch: list[Item]) -> None:
        batch = [item for item in batch if not item.abandoned()]
        if not batch or self._stopped is not None:
            return
        loop = asyncio.get_running_loop()
        dims, ids, adapter = forward_args(batch)
        tokens = sum(len(seq) for seq in ids)
        padded = forward_cost(ids, self._packed)
        if len(batch) > 1 and padded > self._budget.current:
            # Half of a batch that ran out of memory, still over the lowered budget: it would too.
            middle = len(batch) // 2
            await self._run(batch[:middle])
            await self._run(batch[middle:])
            return
        started = loop.time()
        try:
            out = await loop.run_in_executor(self._executor, self._run_batch, ids, dims, adapter)
        except Exception as exc:
            await self._failures.handle(batch, padded, exc)
            return
        elapsed = self._launched.device_seconds(started, loop.time())
        self._deliver(batch, out, tokens, padded, elapsed)

    def _deliver(
        self, batch: list[Item], out: Mapping[int, np.ndarray], tokens: int, padded: int, elapsed: float
    ) -> None:
        """A forward pass over ``batch`` succeeded with ``out``: fill each row of its requests; count it."""
        for row, item in enumerate(batch):
            request = item.request
            if request.future.done():
                continue
            for dim in request.dims:
                request.out[dim][item.row] = out[dim][row]
            request.row_done()
        self._budget.succeeded()
        self._counters.record(len(batch), tokens, padded, elapsed)
        if self._on_batch is not None:
            self._on_batch(tokens, padded, elapsed)

    async def _on_forward_thread(self, function: Callable[[], object]) -> object:
        """``function()`` on the thread that runs the forward passes: the model is only used from it."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, function)

    def _broken(self, failure: Exception, probe_error: Exception) -> None:
        """The probe failed after a text did: stop, failing every request; tell the owner."""
        log.error("the model fails on its probe too (after %r); stopping", failure, exc_info=probe_error)
        self._stopped = lambda: chained(
            EmbedderUnavailable(f"the model is broken: its probe input fails too ({probe_error!r})"),
            probe_error,
        )
        self._fail_all()
        if self._on_broken is not None:
            self._on_broken(probe_error)

    # -- failure handling -------------------------------------------------------------------------

    def _on_loop_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            if self._stopped is None:  # cancelled by an event-loop shutdown rather than close()
                self._stopped = lambda: EmbedderUnavailable("the micro-batcher was cancelled")
        else:
            # The loop only ever ends by raising: a bug.  Never leave callers waiting on a dead loop.
            crash = task.exception() or RuntimeError("loop returned")
            log.error("micro-batcher loop crashed", exc_info=crash)
            self._stopped = lambda: chained(PipelineError("the micro-batcher loop crashed"), crash)
        self._fail_all()

    def _fail_all(self) -> None:
        """Fail every request still waiting or running with the stop error (each gets its own instance)."""
        assert self._stopped is not None
        held = [*self._held, *self._launched.abandon()]
        self._held = []
        items = [*(item for batch in held for item in batch), *self._queue.drain()]
        for request in {item.request for item in items}:
            request.fail(self._stopped())
