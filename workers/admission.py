"""How many ingestion calls one pool keeps in flight at one actor: a limit learnt from its refusals.

An actor holds a bounded amount of ingestion work (its queue, ``batching.max_queued_tokens``, and
``batching.max_pending_requests`` requests waiting for room) and refuses the rest with Backpressure.
A refusal is not free for the actor: the request travelled there, was deserialized and answered on
the host threads that also launch its forward passes.  On an H200 running a 0.6B, a bench that kept
2M tokens in flight against an actor holding ~786k drew ~4,000 refusals a round, and the same 265
forward passes took 16.3 s instead of 10.6 s (tests/perf/results/README.md).  Callers that keep more in
flight than the actors hold (several consumer members sharing actors, a large
``consumer.max_inflight_tokens``) would pay that on every pass.

:class:`AdmissionLimit` keeps that surplus waiting in the caller instead, with the rule TCP's
congestion window and client-side concurrency limiters use: additive increase, multiplicative
decrease.  Several pools sharing an actor each learn a share of what it holds, with no coordination.
Importing this module imports neither torch nor Ray.
"""

from __future__ import annotations

import math

# What a refusal leaves of the calls in flight.  Halving (TCP's choice) costs an actor nothing here:
# the limit only needs to cover a few forward passes of queued work to keep the GPU fed, and the
# actor holds many more (16 passes of queue plus 32 pending requests at the defaults).
DECREASE = 0.5


class AdmissionLimit:
    """The most ingestion calls one pool should have in flight at one actor.

    Guarantees:
    - no limit (``math.inf``) until the actor first refuses one of this pool's calls: a pool whose
      calls fit is never held back;
    - a refusal sets the limit to ``DECREASE`` times the calls still in flight (or the limit, if lower),
      never below 1, so a call can always be sent;
    - one burst of refusals decreases it once: a refusal of a call sent before the last decrease
      (:attr:`epoch` moved on since) changes nothing, as TCP halves at most once a round trip;
    - an answered call raises the limit by ``1 / limit`` (one a round trip of ``limit`` calls), but only
      while the limit was what held calls back (calls in flight ``>= limit - 1``), so a limit nothing
      tested does not drift up.
    """

    def __init__(self, decrease: float = DECREASE) -> None:
        if not 0 < decrease < 1:
            raise ValueError(f"decrease must be in (0, 1), not {decrease}")
        self.decrease = decrease
        self.limit = math.inf
        self.epoch = 0
        """Decreases so far: a call notes it when sent and hands it back to :meth:`refused`."""
        self.refusals = 0
        """Refusals seen, whether or not they decreased the limit."""

    def admits(self, in_flight: int) -> bool:
        """Whether one more call may be sent while ``in_flight`` are."""
        return in_flight < self.limit

    def refused(self, sent_epoch: int, in_flight: int) -> None:
        """A call sent at ``sent_epoch`` was refused; ``in_flight`` others are still out."""
        self.refusals += 1
        if sent_epoch != self.epoch:
            return
        self.limit = max(1.0, self.decrease * min(self.limit, float(in_flight)))
        self.epoch += 1

    def answered(self, in_flight: int) -> None:
        """A call was answered (not refused) while ``in_flight`` others were out."""
        if math.isfinite(self.limit) and in_flight + 1 >= self.limit - 1:
            self.limit += 1.0 / self.limit
