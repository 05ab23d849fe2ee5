"""Capped exponential backoff with jitter for retriable failures."""

from __future__ import annotations

import random


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
