"""What a micro-batcher does with a forward pass that failed (see :mod:`workers.batcher`).

A failure fails no request on the spot.  A batch of several texts is split in halves and each half
runs again (an out-of-memory also lowers the token budget, :mod:`workers.batch_budget`).  A text that
fails alone fails its row with the reason, once a probe pass (a known-good input) has shown that the
model still works; when the probe fails too, the model is broken, not the text, and the batcher is
told to stop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Literal

from workers.batch_budget import BatchBudget
from workers.batch_items import Item
from workers.batcher_stats import ForwardCounters
from workers.errors import ForwardOutOfMemory, one_line

log = logging.getLogger(__name__)

FailureCause = Literal["oom", "error"]

OnFailure = Callable[[FailureCause, bool, int], None]
"""``on_failure(cause, alone, budget)`` after each failed forward pass: ``alone`` when it held one text
(which then fails), else its batch is split; ``budget`` is the token budget from now on (metrics hook)."""


class FailedPasses:
    """Handles the failed forward passes of one micro-batcher.

    ``run`` runs a batch again (halves go back through it, so they may fail and split in turn);
    ``run_probe`` runs the probe pass, raising if it fails (None: no probe, a text failing alone is
    blamed at once); ``broken(failure, probe_error)`` is called when the probe fails after a text did.
    """

    def __init__(
        self,
        budget: BatchBudget,
        counters: ForwardCounters,
        *,
        run: Callable[[list[Item]], Awaitable[None]],
        run_probe: Callable[[], Awaitable[object]] | None,
        broken: Callable[[Exception, Exception], None],
        on_failure: OnFailure | None = None,
    ) -> None:
        self._budget = budget
        self._counters = counters
        self._run = run
        self._run_probe = run_probe
        self._broken = broken
        self._on_failure = on_failure

    async def handle(self, batch: list[Item], padded: int, exc: Exception) -> None:
        """A forward pass over ``batch`` (``padded`` tokens computed) raised ``exc``: split it and run
        the halves, or blame its one text (module docstring)."""
        self._counters.failed += 1
        oom = isinstance(exc, ForwardOutOfMemory)
        if oom and len(batch) > 1:  # one text alone says nothing about how many fit together
            self._budget.out_of_memory(padded)
        cause: FailureCause = "oom" if oom else "error"
        if self._on_failure is not None:
            self._on_failure(cause, len(batch) == 1, self._budget.current)
        if len(batch) > 1:
            self._counters.splits[cause] += 1
            log.warning("forward pass over %d texts (%d tokens) failed, split: %r", len(batch), padded, exc)
            middle = len(batch) // 2
            await self._run(batch[:middle])
            await self._run(batch[middle:])
            return
        if self._run_probe is not None:
            try:
                await self._run_probe()
            except Exception as probe_error:
                self._broken(exc, probe_error)
                return
        item = batch[0]
        reason = one_line(exc) if oom else f"{type(exc).__name__}: {one_line(exc)}"
        log.warning("the model fails on a text of %d tokens run alone: %s", len(item.ids), reason)
        self._counters.failed_texts += 1
        item.request.failed[item.row] = reason
        item.request.row_done()
