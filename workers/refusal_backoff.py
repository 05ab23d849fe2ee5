"""How long an ingestion request that an actor refused (Backpressure) waits before it is routed again.

An actor refuses every request over its ``batching.max_pending_requests`` at once, each with the same
hint: about one forward pass (:meth:`workers.batch_queue.BatchQueue.refusal`).  Callers that all
waited exactly the hint would come back together after that one pass, when room for one or two of
them has opened, and all but those would be refused again, pass after pass (a thundering herd).
:class:`RefusalBackoff` spreads them: each consecutive refusal of one request widens the window its
wait is drawn from.
"""

from __future__ import annotations

import random

# The longest wait, in multiples of the actor's hint (one forward pass of its token budget).  An actor
# that refuses holds batching.max_pending_requests (32) requests, each waiting for room in a full queue
# or being tokenized; the queue alone holds max_queued_tokens (262,144 by default: 16 passes of the
# default 16,384-token budget).  A caller back within 8 passes finds at least half of that work still
# queued, so the actor never runs dry because its callers are asleep, while the window still spreads a
# herd of refused callers over 8 passes instead of one.
MAX_FACTOR = 8.0


class RefusalBackoff:
    """The wait after the n-th consecutive refusal (n = 1, 2, ...) of one request: the actor's hint
    times a factor drawn uniformly from ``[1, min(2**(n-1), cap)]``.

    Guarantees: a wait is never shorter than the hint (sooner, the actor would refuse again) and
    never longer than ``cap`` times it; the first refusal waits exactly the hint (no draw), so an
    isolated refusal costs no more than before; the window doubles with each further refusal up to
    ``cap``.  Draws come only from the ``rng`` given (seed it for reproducible waits), never from
    the global random state.  The count of refusals is the caller's: one count per request, begun
    again after anything but a refusal (the pool's :meth:`~workers.pool.EmbedderPool.embed`).
    """

    def __init__(self, cap: float = MAX_FACTOR, rng: random.Random | None = None) -> None:
        if cap < 1:
            raise ValueError(f"cap must be at least 1 (the hint itself), not {cap}")
        self.cap = cap
        self._rng = rng if rng is not None else random.Random()

    def delay(self, hint: float, refusals: int) -> float:
        """Seconds to wait after the ``refusals``-th consecutive refusal of a request whose actor
        said to come back after ``hint`` seconds."""
        if refusals < 1:
            raise ValueError(f"refusals counts from 1, not {refusals}")
        spread = min(self.cap, 2.0 ** min(refusals - 1, 64))  # 64: no float overflow for long runs
        if spread <= 1:
            return hint
        return hint * self._rng.uniform(1.0, spread)
