"""Milvus sink: every document's chunks in one collection per Matryoshka dimension.

Replica ``{prefix}_{dim}`` holds one row per chunk, keyed ``pk = f"{doc_id}#{chunk_index}"``.
:meth:`MilvusSink.write` gives these guarantees for a batch of writes in partition order:

* The result equals applying the writes one by one in order, skipping the rejected ones:
  per document only the last accepted write is sent, an upsert replaces *all* chunks of
  its document (rows ``0..n-1`` upserted, then rows with ``chunk_index >= n`` deleted), a
  delete removes every chunk.  Re-applying the same batch leaves Milvus unchanged, so a
  batch that failed half-way is repaired by retrying it.
* A write Milvus can never accept (NaN vector, text too long, ...) is rejected alone and
  reported in :attr:`WriteResult.rejected` by its position; the rest are written.
* A write older than what a replica already holds for its document (same partition, lower
  offset: a fenced-off member's) is left out of that replica and reported in
  :attr:`WriteResult.superseded`; see :mod:`pipeline.milvus.positions` for what that guarantees.
* A transient failure (server down, timeout, rate limit) raises
  :class:`~pipeline.milvus.errors.SinkUnavailable`: retry the same batch later.  The retry first
  loads the replicas again (:meth:`MilvusSink.ensure_collections`): a restarted server comes
  back with its collections released, and would refuse the reads a write needs.

Reads (:meth:`~MilvusSink.count`, :meth:`~MilvusSink.search`, :meth:`~MilvusSink.fetch`,
:meth:`~MilvusSink.fetch_all`) and writes share that mechanism (:meth:`MilvusSink._on_loaded_replicas`),
and a call that finds a replica released (``CollectionNotLoaded``: a restart, or an operator's
``release_collection``) loads the replicas and is retried at once, once.

Collections use Strong consistency: a delete by expression must see every earlier write
(the stale chunks of a previous version), and :meth:`count` / :meth:`fetch_all` read
their own writes.  Searches therefore wait for the server's latest time tick.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

import numpy as np

from pipeline.documents import DocumentWrite, Hit, WriteResult
from pipeline.milvus.connection import MilvusConnection
from pipeline.milvus.errors import CollectionNotLoaded, SinkUnavailable
from pipeline.milvus.rows import pk_filters
from pipeline.milvus.schema import CONSISTENCY, count_rows, ensure_replicas, search_params
from pipeline.milvus.tenants import check_tenant, prunes_by_key, scoped, tenant_condition
from pipeline.milvus.writes import ReplicaWriter
from pipeline.settings import MilvusSettings

_QUERY_PAGE = 1000
_HIT_FIELDS = frozenset({"text", "metadata"})
_T = TypeVar("_T")
MAX_SEARCH_LIMIT = 16384
"""Most hits one Milvus search may return per query (its ``topk`` limit; Milvus Lite has none)."""


class MilvusSink:
    """Writes and reads the dimension replicas; every method is blocking (use a thread)."""

    def __init__(
        self,
        settings: MilvusSettings,
        dims: Sequence[int],
        *,
        max_call_rows: int | None = None,
        max_call_bytes: int | None = None,
    ) -> None:
        """``dims``: the replicas, widest (native) first, as
        :meth:`pipeline.settings.ReplicaSettings.replica_dims` resolved and validated them.
        ``max_call_rows`` / ``max_call_bytes`` override the settings of the same names."""
        self._settings = settings
        self._dims = tuple(dims)
        self._max_rows = settings.max_call_rows if max_call_rows is None else max_call_rows
        self._max_bytes = settings.max_call_bytes if max_call_bytes is None else max_call_bytes
        self._milvus = MilvusConnection(settings)
        self._writer = ReplicaWriter(
            self._milvus,
            self._dims,
            self.collection_name,
            self._max_rows,
            self._max_bytes,
            settings.tenant_field,
        )
        self._prunes: bool | None = None  # whether the server finds every row by a partition-key equality
        self._reload = False  # a call failed transiently: load the replicas before the next write

    @property
    def dims(self) -> tuple[int, ...]:
        return self._dims

    def collection_name(self, dim: int) -> str:
        return f"{self._settings.collection_prefix}_{dim}"

    def ensure_collections(self, wait_s: float | None = None) -> None:
        """Create missing replicas (schema, index), check existing ones, and load all, waiting for the
        loads at most ``wait_s`` (by default ``milvus.load_timeout_s``).

        Raises ConfigError when an existing collection does not match the schema, metric or
        index type this sink writes, SinkUnavailable when a replica is still loading at the end.
        """
        names = {d: self.collection_name(d) for d in self._dims}
        ensure_replicas(self._milvus, self._settings, names, wait_s=wait_s)

    # ---------------------------------------------------------------------- writes

    def write(self, writes: Sequence[DocumentWrite]) -> WriteResult:
        """Apply ``writes`` (in partition order) to every replica; see the module docstring.

        Raises SinkUnavailable on transient failures (retry the same batch), ConfigError when a
        replica is missing, PipelineError when Milvus fails otherwise.  Concurrent calls must
        not share documents (the consumer writes each partition from one task).
        """
        return self._on_loaded_replicas(lambda: self._writer.write(writes))

    def _on_loaded_replicas(self, operation: Callable[[], _T]) -> _T:
        """``operation()`` on loaded replicas: after a transient failure the next call loads them first
        (:meth:`ensure_collections`).  A call that finds one released loads them and is retried at
        once, once; other transient failures are raised (SinkUnavailable: retry later)."""
        try:
            return self._attempt(operation)
        except CollectionNotLoaded:
            return self._attempt(operation)  # the replicas are loaded first

    def _attempt(self, operation: Callable[[], _T]) -> _T:
        try:
            if self._reload:
                # A write waits one call's time for the load, not start-up's: it is retried anyway,
                # and a closing lane must not wait minutes on it.
                self.ensure_collections(wait_s=self._settings.timeout_s)
                self._reload = False
            return operation()
        except SinkUnavailable:
            self._reload = True
            raise

    # ----------------------------------------------------------------------- reads

    def _read(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``MilvusConnection.call`` on loaded replicas (:meth:`_on_loaded_replicas`)."""
        return self._on_loaded_replicas(lambda: self._milvus.call(what, method, *args, **kwargs))

    def count(self, dim: int) -> int:
        """Exact row count of replica ``dim``; Strong consistency, so every finished write counts."""
        name = self.collection_name(dim)
        return self._on_loaded_replicas(lambda: count_rows(self._milvus, name))

    def search(
        self,
        dim: int,
        vectors: np.ndarray,
        top_k: int,
        output_fields: Collection[str] = ("text", "metadata"),
        where: str | None = None,
        tenant: str | None = None,
    ) -> list[list[Hit]]:
        """The ``top_k`` nearest chunks (cosine, best first) of each row of ``vectors`` (q, dim).

        ``output_fields`` picks which of "text" and "metadata" to fetch, ``where`` (a compiled filter) which
        chunks qualify.  With tenants (``milvus.tenant_field``) ``tenant`` is required and only its chunks
        qualify (:meth:`confine`).  ValueError for a ``top_k`` outside ``1..MAX_SEARCH_LIMIT``, and
        TenantRequired, before Milvus is called.
        """
        where = self.confine(where, tenant)
        if not 1 <= top_k <= MAX_SEARCH_LIMIT:
            raise ValueError(f"top_k must be in 1..{MAX_SEARCH_LIMIT} (Milvus' limit), got {top_k}")
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != dim:
            raise ValueError(f"query vectors must have shape (q, {dim}), got {queries.shape}")
        if unknown := set(output_fields) - _HIT_FIELDS:
            raise ValueError(f"output_fields may only hold {sorted(_HIT_FIELDS)}, got {sorted(unknown)}")
        if not len(queries):
            return []
        name = self.collection_name(dim)
        result = self._read(
            f"searching {name}",
            "search",
            name,
            data=queries.tolist(),
            limit=top_k,
            output_fields=["pk", "doc_id", "chunk_index", *sorted(output_fields)],
            search_params=search_params(self._settings, top_k),
            **({"filter": where} if where else {}),
        )
        return [
            [
                Hit(
                    pk=hit["entity"]["pk"],
                    doc_id=hit["entity"]["doc_id"],
                    chunk_index=int(hit["entity"]["chunk_index"]),
                    text=hit["entity"]["text"] if "text" in output_fields else None,
                    metadata=hit["entity"]["metadata"] if "metadata" in output_fields else None,
                    score=float(hit["distance"]),
                )
                for hit in hits
            ]
            for hits in result
        ]

    def fetch(
        self,
        dim: int,
        pks: Collection[str],
        output_fields: Collection[str] = (),
        where: str | None = None,
        tenant: str | None = None,
    ) -> dict[str, dict[str, Any]]:
        """``{pk: row}`` for the chunks of ``pks`` in replica ``dim`` that exist and match ``where`` (and
        belong to ``tenant``, required with tenants, as for :meth:`search`): each row has ``doc_id``,
        ``chunk_index``, ``embedding`` (float32 array) and the ``output_fields`` among "text" and
        "metadata".  Point lookups by primary key: no scan of the replica."""
        where = self.confine(where, tenant)
        if unknown := set(output_fields) - _HIT_FIELDS:
            raise ValueError(f"output_fields may only hold {sorted(_HIT_FIELDS)}, got {sorted(unknown)}")
        name = self.collection_name(dim)
        fields = ["pk", "doc_id", "chunk_index", "embedding", *sorted(output_fields)]
        found: dict[str, dict[str, Any]] = {}
        for expr in (f"({pks_in}) and ({where})" if where else pks_in for pks_in in pk_filters(pks)):
            for row in self._read(f"reading {name}", "query", name, filter=expr, output_fields=fields):
                row["embedding"] = np.asarray(row["embedding"], dtype=np.float32)
                found[row["pk"]] = row
        return found

    def confine(self, where: str | None, tenant: str | None) -> str | None:
        """``where`` confined to ``tenant``'s rows when the replicas have tenants (TenantRequired without
        one; ValueError for a tenant when they have none): see :mod:`pipeline.milvus.tenants`.  The first
        call asks the server its version (whether a partition-key equality finds every row)."""
        tenant = check_tenant(self._settings.tenant_field, tenant)
        if tenant is None:
            return where
        if self._prunes is None:
            version = self._read("asking the server version", "get_server_version")
            self._prunes = prunes_by_key(str(version))
        return scoped(tenant_condition(tenant, prunes=self._prunes), where)

    def fetch_all(self, dim: int) -> list[dict[str, Any]]:
        """Every row of replica ``dim`` with its vector (a list of floats), sorted by pk.

        Strong consistency; holds the whole replica in memory, so meant for checks and tools.
        """
        name = self.collection_name(dim)
        rows = self._on_loaded_replicas(
            lambda: self._milvus.query_all(
                f"reading {name}",
                name,
                _QUERY_PAGE,
                output_fields=["pk", "doc_id", "chunk_index", "text", "metadata", "embedding"],
                consistency_level=CONSISTENCY,
            )
        )
        return sorted(
            (
                {
                    "pk": row["pk"],
                    "doc_id": row["doc_id"],
                    "chunk_index": int(row["chunk_index"]),
                    "text": row["text"],
                    "metadata": row["metadata"],
                    "embedding": [float(x) for x in row["embedding"]],
                }
                for row in rows
            ),
            key=lambda row: row["pk"],
        )

    def flush(self) -> None:
        """Seal the replicas' growing segments; milvus-lite searches a fresh burst faster after it."""
        for dim in self._dims:
            name = self.collection_name(dim)
            self._milvus.call(f"flushing {name}", "flush", name)

    def close(self) -> None:
        """Drop the connection; a later call reconnects."""
        self._milvus.close()
