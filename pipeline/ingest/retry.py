"""Retrying transient failures: capped exponential backoff with jitter, and the retry loop.

Every failure the consumer can ride out is a :class:`~workers.errors.RetriableError` (its
``retry_after`` is the least wait); :func:`retry_transient` retries such a call forever,
:class:`Backoff` spaces the tries.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from workers.errors import RetriableError

log = logging.getLogger(__name__)

T = TypeVar("T")


class Backoff:
    """Delays for successive retries: ``base * 2**n`` (at least the server's ``retry_after``), capped."""

    def __init__(self, base: float = 0.2, cap: float = 30.0, jitter: float = 0.2) -> None:
        self._base = base
        self._cap = cap
        self._jitter = jitter
        self._attempt = 0

    def next(self, retry_after: float = 0.0) -> float:
        """The delay before the next try; grows with every call until ``cap``."""
        delay = min(self._cap, max(retry_after, self._base * 2**self._attempt))
        self._attempt += 1
        return delay * (1 + random.uniform(-self._jitter, self._jitter)) if delay < self._cap else delay

    def reset(self) -> None:
        self._attempt = 0


async def retry_transient(
    what: str,
    call: Callable[[], Awaitable[T]],
    backoff_cap_s: float,
    on_failing: Callable[[], None] | None = None,
    on_recovered: Callable[[], None] | None = None,
) -> T:
    """``await call()`` until it does not raise a RetriableError, sleeping a capped exponential backoff
    (at least the error's ``retry_after``) between tries.

    ``on_failing`` runs at the first failure, ``on_recovered`` once after it when the call
    succeeds, fails otherwise or is cancelled.  Other errors propagate at once.
    """
    backoff = Backoff(cap=backoff_cap_s)
    failing = False
    try:
        while True:
            try:
                return await call()
            except RetriableError as exc:
                delay = backoff.next(exc.retry_after)
                if not failing and on_failing is not None:
                    on_failing()
                failing = True
                log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
                await asyncio.sleep(delay)
    finally:
        if failing and on_recovered is not None:
            on_recovered()
