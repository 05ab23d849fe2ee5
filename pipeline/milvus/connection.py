"""One Milvus connection whose calls carry the call timeout and raise project errors."""

from __future__ import annotations

import threading
from typing import Any

from pymilvus import MilvusClient
from pymilvus.client import entity_helper

from pipeline.milvus.errors import translated
from pipeline.settings import MilvusSettings

# pymilvus' row path "checks" a VARCHAR value by walking it as if it were a list of strings: one
# Python isinstance and len per character, which made packing the rows cost more CPU than the
# GPU spent embedding them (a 2,000-character chunk in three replicas: ~6 ms, in the consumer's
# event loop process).  Every string this project writes is checked first, and more strictly (UTF-8
# bytes against the schema), by pipeline.milvus.rows.plan_write, so that walk is switched off.
entity_helper.CHECK_STR_ARRAY = False

# pymilvus pings every 10 s even on idle connections; servers with gRPC's default policy (Milvus
# Lite among them) answer an idle connection's pings with GOAWAY "too_many_pings", which then
# fails the next calls. Ping only while calls are in flight, and not more than once a minute.
# A local subchannel pool keeps a reconnecting client off the process-wide pool, where a
# connection to a restarted server may still sit in its reconnect backoff.
GRPC_OPTIONS = {
    "grpc.keepalive_time_ms": 60_000,
    "grpc.keepalive_permit_without_calls": False,
    "grpc.use_local_subchannel_pool": 1,
}


def open_client(
    uri: str, *, token: str = "", db_name: str = "", timeout: float | None = None
) -> MilvusClient:
    """A new Milvus client on a channel of its own, with keepalive pings Milvus Lite tolerates.

    Every client of this project (and of its tests) is made here: one client with pymilvus'
    default pings can get the shared connection GOAWAY'd for all the others.
    """
    return MilvusClient(
        uri=uri,
        token=token,
        db_name=db_name,
        timeout=timeout,
        dedicated=True,  # close() must really close it, not a shared channel
        grpc_options=GRPC_OPTIONS,
    )


class MilvusConnection:
    """A :class:`~pymilvus.MilvusClient`, opened on first use and again after :meth:`close`.

    Thread-safe.  Every call is bounded by ``settings.timeout_s`` and fails with the
    errors of :func:`pipeline.milvus.errors.translate`.
    """

    def __init__(self, settings: MilvusSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._milvus: MilvusClient | None = None

    def call(self, what: str, method: str, *args: Any, refusable: bool = False, **kwargs: Any) -> Any:
        """``client.<method>(*args, **kwargs)``; ``what`` names the call in error messages,
        ``refusable`` says it carries rows Milvus may refuse (PoisonInput)."""
        with translated(what, refusable=refusable):
            return getattr(self._client(), method)(*args, timeout=self._settings.timeout_s, **kwargs)

    def query_all(self, what: str, collection: str, page_size: int, **kwargs: Any) -> list[dict[str, Any]]:
        """Every row ``query_iterator(collection, **kwargs)`` yields, read ``page_size`` at a time."""
        rows: list[dict[str, Any]] = []
        with translated(what):
            pages = self._client().query_iterator(
                collection, batch_size=page_size, timeout=self._settings.timeout_s, **kwargs
            )
            try:
                while page := pages.next():
                    rows.extend(page)
            finally:
                pages.close()
        return rows

    def close(self) -> None:
        """Drop the connection; a later call reconnects."""
        with self._lock:
            client, self._milvus = self._milvus, None
        if client is not None:
            client.close()

    def _client(self) -> MilvusClient:
        with self._lock:
            if self._milvus is None:
                self._milvus = open_client(
                    self._settings.uri,
                    token=self._settings.token_secret() or "",
                    db_name=self._settings.db_name,
                    timeout=self._settings.timeout_s,
                )
            return self._milvus
