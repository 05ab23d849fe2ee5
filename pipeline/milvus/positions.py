"""Fencing by source position: a write older than what a replica holds for its document loses.

Every row carries the Kafka position of the event it was written from (``src_partition``,
``src_offset``; :class:`~pipeline.documents.SourcePosition`).  All events of an id share a key,
hence a partition, so for one document a higher offset of the same partition is a newer event.

Milvus has no conditional upsert, so the rule is a read before the write: before a replica is
written, :func:`superseded` reads the position stored with each document's chunk 0 (every write
upserts chunk 0 first, so it carries the newest position that reached the replica) and the
sink leaves out the writes older than it.  Guarantees and limits:

* A write that starts after a newer write of its document finished in a replica loses there —
  whoever sent either.  This is what fences a member that lost its partition but still holds
  writes (cut off from the broker, evicted while Milvus was down, paused): every attempt of a
  write, retries included, reads first, so a write held back until the new owner wrote loses.
* The same position again (a re-delivery) is written again: that is idempotent.
* Not closed: a write whose read came *before* the newer write and whose upsert lands *after* it
  (the two owners racing within one Milvus call).  The lane shortens that race from the other
  side: a member stops sending writes for a partition once it knows it lost it
  (:meth:`pipeline.ingest.lane.LaneRunner.close`).
* A delete leaves no row, so it leaves no position behind: a stale upsert that arrives after
  the new owner deleted its document is written (the document comes back until its id's next
  event).  Keeping tombstone rows would close this, at the cost of every read filtering them.
* Positions of different partitions are not ordered (the topic was repartitioned, or the
  rows came from a tool): such a write is never held back.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.documents import SourcePosition
from pipeline.milvus.connection import MilvusConnection
from pipeline.milvus.rows import Plan, chunk_pk, pk_filters
from pipeline.milvus.schema import CONSISTENCY

POSITION_FIELDS = ("src_partition", "src_offset")


def is_stale(write: SourcePosition | None, stored: SourcePosition) -> bool:
    """Whether a write from ``write`` is older than the ``stored`` position of its document."""
    return write is not None and stored.partition == write.partition and stored.offset > write.offset


def stored_positions(
    connection: MilvusConnection, name: str, doc_ids: Sequence[str]
) -> dict[str, SourcePosition]:
    """``{doc_id: position}`` of the documents of ``doc_ids`` that collection ``name`` holds (read
    from their chunk 0, Strong consistency: every finished write is seen)."""
    found: dict[str, SourcePosition] = {}
    by_pk = {chunk_pk(doc_id, 0): doc_id for doc_id in doc_ids}
    for expr in pk_filters(by_pk):
        rows = connection.call(
            f"reading {name}",
            "query",
            name,
            filter=expr,
            output_fields=["pk", *POSITION_FIELDS],
            consistency_level=CONSISTENCY,
        )
        for row in rows:
            found[by_pk[row["pk"]]] = SourcePosition(int(row["src_partition"]), int(row["src_offset"]))
    return found


def superseded(connection: MilvusConnection, name: str, plans: Sequence[Plan]) -> set[str]:
    """The documents of ``plans`` for which collection ``name`` holds a newer write than the plan's."""
    checked = [plan for plan in plans if plan.source is not None]
    if not checked:
        return set()
    stored = stored_positions(connection, name, [plan.doc_id for plan in checked])
    return {
        plan.doc_id
        for plan in checked
        if plan.doc_id in stored and is_stale(plan.source, stored[plan.doc_id])
    }
