"""A one-shot wake-up that any number of coroutines can wait on."""

from __future__ import annotations

import asyncio


class Wakeup:
    """Waiters of :meth:`wait` all return at the next :meth:`notify`; each re-checks its own condition.

    Guarantees: a waiter cancelled by its caller never cancels the others' wake-up (the shared future
    is shielded); a wake-up left by waiters of an event loop that ended is never waited on by a later
    loop (an owner used from one ``asyncio.run`` after another); :meth:`notify` is safe with no
    waiter and after the waiters' loop closed.
    """

    def __init__(self) -> None:
        self._future: asyncio.Future[None] | None = None

    async def wait(self) -> None:
        """Return at the next :meth:`notify` (or when cancelled)."""
        loop = asyncio.get_running_loop()
        if self._future is None or self._future.get_loop() is not loop:
            self._future = loop.create_future()
        await asyncio.shield(self._future)

    def notify(self) -> None:
        """Wake every current waiter; later waiters wait for the next call."""
        future, self._future = self._future, None
        if future is not None and not future.done() and not future.get_loop().is_closed():
            future.set_result(None)
