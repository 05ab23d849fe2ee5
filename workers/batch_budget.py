"""The token budget a micro-batcher cuts batches to: the configured one, lowered after an out-of-memory.

A forward pass that ran out of device memory says that its cost does not fit next to the model on
this device right now.  :class:`BatchBudget` then cuts the budget to half that cost (multiplicative
decrease), so the next batches are built to fit instead of each one failing and being split again.
It grows back slowly: after every :data:`GROW_AFTER` forward passes in a row without an out-of-memory,
by :data:`GROW_STEP` of the configured budget (additive increase), never above it.  A memory shortage
that passes (fragmentation, another process on the GPU, one unusually long batch) is therefore not
paid for the rest of the actor's life; a lasting one costs one failed pass every
``GROW_AFTER / GROW_STEP`` passes or so.  Configure ``max_batch_tokens`` to fit to avoid both.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

log = logging.getLogger(__name__)


def forward_cost(rows: Sequence[Sequence[int]], packed: bool) -> int:
    """Tokens a forward pass over ``rows`` computes, what a budget bounds: the sum of their lengths
    when packed (one unpadded row), else the longest length times their number (padded)."""
    if not rows:
        return 0
    return sum(len(row) for row in rows) if packed else max(len(row) for row in rows) * len(rows)


GROW_AFTER = 64
"""Forward passes in a row without an out-of-memory before the budget grows one step."""
GROW_STEP = 1 / 16
"""How much one step adds, as a share of the configured budget."""


class BatchBudget:
    """The current token budget of one micro-batcher (see the module docstring)."""

    def __init__(self, configured: int) -> None:
        self.configured = configured
        self.current = configured
        self.shrinks = 0
        """Out-of-memory errors that lowered the budget, since creation."""
        self._clean = 0

    def out_of_memory(self, cost: int) -> None:
        """A forward pass of ``cost`` tokens ran out of memory: at most half of it from now on."""
        lowered = max(1, min(self.current, cost // 2))
        if lowered < self.current:
            log.warning(
                "a forward pass of %d tokens ran out of memory; batch budget %d -> %d tokens",
                cost,
                self.current,
                lowered,
            )
            self.current = lowered
        self.shrinks += 1
        self._clean = 0

    def succeeded(self) -> None:
        """A forward pass succeeded: count it towards growing back."""
        if self.current >= self.configured:
            return
        self._clean += 1
        if self._clean >= GROW_AFTER:
            self._clean = 0
            self.current = min(self.configured, self.current + max(1, int(self.configured * GROW_STEP)))
            log.info("batch budget grows back to %d tokens", self.current)
