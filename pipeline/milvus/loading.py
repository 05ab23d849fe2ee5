"""Loading replica collections: start every load, then wait for all of them, bounded and visible.

Loading a large collection (after a restart, or on a new query node) takes minutes on a real
server, far longer than one call's ``milvus.timeout_s``.  So the loads are started without
waiting and their state is polled, each poll a call bounded by ``milvus.timeout_s``, until all
are loaded or ``wait_s`` has passed.  A server that stops answering fails a poll at once
(:class:`~pipeline.milvus.errors.SinkUnavailable`) instead of being retried for the whole wait, and
a wait that runs out is a SinkUnavailable too: the server is still loading, and a later try
finds the load further on.  While it waits it logs each replica's progress every
``_PROGRESS_EVERY_S``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from pymilvus.client.types import LoadState

from pipeline.milvus.connection import MilvusConnection
from pipeline.milvus.errors import SinkUnavailable

logger = logging.getLogger(__name__)

_POLL_S = 0.25
_PROGRESS_EVERY_S = 10.0


def load_collections(connection: MilvusConnection, names: Iterable[str], wait_s: float) -> None:
    """Load collections ``names`` and return once every one is loaded.

    Raises SinkUnavailable when one is still loading after ``wait_s`` seconds (naming it and its
    progress) or the server does not answer; other failures as
    :meth:`~pipeline.milvus.connection.MilvusConnection.call` raises them.
    """
    pending = list(dict.fromkeys(names))
    for name in pending:  # started side by side: the server loads them in parallel
        connection.call(f"loading {name}", "load_collection", name, _async=True)
    started = time.monotonic()
    deadline = started + wait_s
    reported = started
    while True:
        progress = {name: _load_progress(connection, name) for name in pending}
        pending = [name for name, done in progress.items() if done is not None]
        if not pending:
            return
        now = time.monotonic()
        still = ", ".join(f"{name} ({progress[name]}%)" for name in pending)
        if now >= deadline:
            raise SinkUnavailable(
                f"Milvus is still loading {still} after {wait_s:g} s; it goes on loading, a later try "
                "waits again (start-up waits milvus.load_timeout_s)"
            )
        if now - reported >= _PROGRESS_EVERY_S:
            logger.info("waiting for Milvus to load %s: %.0f s of %g s", still, now - started, wait_s)
            reported = now
        time.sleep(min(_POLL_S, deadline - now))


def _load_progress(connection: MilvusConnection, name: str) -> int | None:
    """None once collection ``name`` is loaded, else its loading progress in percent (0 when the
    server does not say, or has not begun; a released collection is loaded again)."""
    answer = connection.call(f"reading the load state of {name}", "get_load_state", name)
    if answer["state"] == LoadState.Loaded:
        return None
    if answer["state"] == LoadState.NotLoad:  # released since the load began: start it again
        connection.call(f"loading {name}", "load_collection", name, _async=True)
    return int(answer.get("progress") or 0)
