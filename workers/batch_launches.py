"""Forward passes a micro-batcher has queued on the device and not yet read back (see :mod:`workers.batcher`).

A model that can queue a pass and wait for its results apart (:data:`LaunchBatch`) lets the batcher's
forward thread queue the next pass while the current one still runs: :class:`LaunchedPasses` waits for
each one's results on a thread of its own and keeps them in launch order.  Importing this module
imports neither torch nor transformers.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from workers.batch_items import Item

log = logging.getLogger(__name__)

Results = Mapping[int, np.ndarray]

LaunchBatch = Callable[[list[Sequence[int]], tuple[int, ...], str | None], Callable[[], Results]]
"""``launch_batch(ids, dims, adapter)`` queues the forward pass of :data:`workers.batcher.RunBatch` and
returns the function that waits for its results (called on another thread); ``run_batch(...)`` is
``launch_batch(...)()``."""


@dataclass(eq=False)
class LaunchedPass:
    """A batch whose forward pass is queued; ``results`` completes when its vectors are on the host."""

    batch: list[Item]
    tokens: int
    padded: int
    started: float
    results: asyncio.Future[Results]


class LaunchedPasses:
    """Queued passes, oldest first, at most ``depth`` of them; ``on_done`` is called (on the event loop)
    whenever one's results are back or it failed.  Use it from one event loop."""

    def __init__(self, depth: int, on_done: Callable[[], None]) -> None:
        self._depth = depth
        self._on_done = on_done
        self._passes: deque[LaunchedPass] = deque()
        # Waits for each pass's results, so that the forward thread is free to queue the next one.
        self._collector = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-collect")
        self._last_done = 0.0

    def __len__(self) -> int:
        return len(self._passes)

    def add(
        self, batch: list[Item], tokens: int, padded: int, started: float, wait: Callable[[], Results]
    ) -> None:
        """A pass over ``batch`` was queued at ``started`` (event-loop time); ``wait()`` reads it back."""
        results = asyncio.get_running_loop().run_in_executor(self._collector, wait)
        results.add_done_callback(lambda _: self._on_done())
        self._passes.append(LaunchedPass(batch, tokens, padded, started, results))

    def oldest_due(self) -> bool:
        """True when the oldest pass should be read back now: it is done, or no more may be queued."""
        return bool(self._passes) and (self._passes[0].results.done() or len(self._passes) >= self._depth)

    def oldest(self) -> LaunchedPass:
        return self._passes[0]

    def pop_oldest(self) -> LaunchedPass:
        return self._passes.popleft()

    def device_seconds(self, started: float, now: float) -> float:
        """The seconds a pass queued at ``started`` and read back at ``now`` held the device: from its
        start or the previous pass's end, whichever is later (passes overlap on the host, not there)."""
        seconds = now - max(started, self._last_done)
        self._last_done = now
        return seconds

    def abandon(self) -> list[list[Item]]:
        """Forget every pass (their outcomes are still read, never left unretrieved); their batches."""
        passes = list(self._passes)
        self._passes.clear()
        for launched in passes:
            launched.results.add_done_callback(_read_abandoned)
        return [launched.batch for launched in passes]

    def shutdown(self) -> None:
        """Stop the waiting thread once its current wait returns; later waits are cancelled."""
        self._collector.shutdown(wait=False, cancel_futures=True)


def _read_abandoned(results: asyncio.Future[Results]) -> None:
    """Read the outcome of a pass nobody waits for any more (its requests were failed)."""
    if not results.cancelled() and results.exception() is not None:
        log.debug(
            "a forward pass ended with an error after the batcher stopped", exc_info=results.exception()
        )
