"""The write algorithm of :class:`~pipeline.milvus.sink.MilvusSink`: plans checked, then sent to every
replica, newest write per document first, refusals isolated, stale chunks deleted.

The guarantees are the sink's (:mod:`pipeline.milvus.sink`); this module holds the stage that gives
them, over one :class:`~pipeline.milvus.connection.MilvusConnection` of the sink's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from pipeline.documents import DocumentWrite, UpsertDocument, WriteResult
from pipeline.milvus import metrics
from pipeline.milvus.connection import MilvusConnection
from pipeline.milvus.errors import poison, show
from pipeline.milvus.positions import superseded
from pipeline.milvus.rows import (
    Plan,
    first_stale_pks,
    pk_filters,
    plan_write,
    stale_chunk_filters,
    upsert_calls,
)
from pipeline.milvus.schema import CONSISTENCY
from workers.errors import PipelineError, PoisonInput


class ReplicaWriter:
    """Writes batches of document writes to the replicas of ``dims`` (widest first), named by ``name``."""

    def __init__(
        self,
        milvus: MilvusConnection,
        dims: Sequence[int],
        name: Callable[[int], str],
        max_rows: int,
        max_bytes: int,
        tenant_field: str | None = None,
    ) -> None:
        """``max_rows`` / ``max_bytes``: the largest upsert call; ``tenant_field``: ``milvus.tenant_field``
        (each row then carries its document's tenant, and a document without one is refused)."""
        self._milvus = milvus
        self._dims = tuple(dims)
        self._name = name
        self._max_rows = max_rows
        self._max_bytes = max_bytes
        self._tenant_field = tenant_field

    def write(self, writes: Sequence[DocumentWrite]) -> WriteResult:
        """Apply ``writes`` (in partition order) to every replica: see :mod:`pipeline.milvus.sink`."""
        rejected: dict[int, PoisonInput] = {}
        candidates: dict[str, list[Plan]] = {}  # valid writes per document, in order
        for index, document_write in enumerate(writes):
            # A delete leaves its document without chunks, like an upsert of none.
            chunks, vectors = (
                (document_write.chunks, document_write.vectors)
                if isinstance(document_write, UpsertDocument)
                else ((), {})
            )
            try:
                plan = plan_write(
                    index,
                    document_write.doc_id,
                    chunks,
                    vectors,
                    self._dims,
                    document_write.source,
                    self._tenant_field,
                )
            except PoisonInput as exc:
                rejected[index] = exc
                continue
            candidates.setdefault(plan.doc_id, []).append(plan)
        applied: set[str] = set()
        older: set[str] = set()
        rows = 0
        # Each round sends the latest remaining write of each document; a write Milvus
        # refuses drops out and that document's previous write is sent next round.
        while candidates:
            latest = [plans[-1] for plans in candidates.values()]
            refused = self._apply(latest, older)
            for plan in latest:
                if plan.doc_id in refused:
                    rejected[candidates[plan.doc_id].pop().index] = refused[plan.doc_id]
                else:
                    applied.add(plan.doc_id)
                    rows += len(plan.texts)
            candidates = {d: candidates[d] for d in refused if candidates[d]}
        return WriteResult(rejected=rejected, documents=len(applied), rows=rows, superseded=frozenset(older))

    def _apply(self, plans: Sequence[Plan], older: set[str]) -> dict[str, PoisonInput]:
        """Write one plan per document to every replica; returns the documents Milvus refused.

        A replica that holds a newer write of a document than its plan's is left alone for that
        document, which is added to ``older`` (the read is part of every attempt, retries included).

        A refused document is left as it was, except that one too large for a single call
        may keep the rows of its calls that went through (its next write repairs it).
        Refusals are only expected in the first replica: the replicas differ only in vector
        width, which was validated.
        """
        refused: dict[str, PoisonInput] = {}
        for replica, dim in enumerate(self._dims):
            name = self._name(dim)
            started = time.perf_counter()
            newer = superseded(self._milvus, name, [p for p in plans if p.doc_id not in refused])
            older |= newer
            live = [p for p in plans if p.doc_id not in refused and p.doc_id not in newer]
            upserts = [p for p in live if p.texts]
            for call_plans, rows in upsert_calls(upserts, dim, self._max_rows, self._max_bytes):
                try:
                    self._milvus.call(f"upserting into {name}", "upsert", name, rows, refusable=True)
                except PoisonInput as exc:
                    outcome = (
                        {call_plans[0].doc_id: exc}
                        if len(call_plans) == 1
                        else self._isolate(name, call_plans, dim)
                    )
                    if outcome and replica:
                        raise PipelineError(
                            f"{name} refused documents that {self._name(self._dims[0])} "
                            f"accepted ({', '.join(map(show, outcome))}): {exc}"
                        ) from exc
                    refused.update({d: poison(d, str(e)) for d, e in outcome.items()})
            # Every document drops its chunks from its new chunk count on (all of them for a
            # delete).  Only documents that have such chunks get a delete: a delete by doc_id
            # scans the collection, a lookup by primary key does not.
            stale = self._with_stale_chunks(name, [p for p in live if p.doc_id not in refused])
            for expr in stale_chunk_filters(stale):
                self._milvus.call(
                    f"deleting from {name}", "delete", name, filter=expr, consistency_level=CONSISTENCY
                )
            metrics.replica_written(name, time.perf_counter() - started)
        return refused

    def _with_stale_chunks(self, name: str, plans: Sequence[Plan]) -> list[Plan]:
        """The plans whose document has a chunk at or past its new chunk count in ``name``."""
        first_stale = first_stale_pks(plans)
        found: set[str] = set()
        for expr in pk_filters(first_stale):
            rows = self._milvus.call(
                f"reading {name}",
                "query",
                name,
                filter=expr,
                output_fields=["pk"],
                consistency_level=CONSISTENCY,
            )
            found.update(row["pk"] for row in rows)
        return [plan for pk, plan in first_stale.items() if pk in found]

    def _isolate(self, name: str, plans: Sequence[Plan], dim: int) -> dict[str, PoisonInput]:
        """Upsert ``plans`` one document at a time; returns the ones Milvus refuses."""
        refused: dict[str, PoisonInput] = {}
        for plan in plans:
            try:
                for _, rows in upsert_calls([plan], dim, self._max_rows, self._max_bytes):
                    self._milvus.call(f"upserting into {name}", "upsert", name, rows, refusable=True)
            except PoisonInput as exc:
                refused[plan.doc_id] = exc
        return refused
