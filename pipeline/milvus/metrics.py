"""Replica-side metrics, recorded with ``ray.util.metrics`` (exported as ``ray_ingest_*`` by Ray).

Before ``ray.init`` (unit tests with fakes) recording does nothing; the only tag is the replica
collection, so cardinality is the number of replicas.
"""

from __future__ import annotations

from workers.metrics import MetricSpec

WRITE_SECONDS = MetricSpec(
    "ingest_milvus_write_seconds",
    "histogram",
    "Time to write one batch of documents to one replica collection (upserts and stale-chunk deletes).",
    ("replica",),
    (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

SPECS: tuple[MetricSpec, ...] = (WRITE_SECONDS,)
"""Every metric the Milvus side records."""

_write_seconds = WRITE_SECONDS.histogram()
_seconds_by_replica: dict[str, float] = {}


def replica_written(replica: str, seconds: float) -> None:
    """One write batch reached ``replica`` in ``seconds``."""
    _write_seconds.observe(seconds, tags={"replica": replica})
    _seconds_by_replica[replica] = _seconds_by_replica.get(replica, 0.0) + seconds


def replica_write_seconds() -> dict[str, float]:
    """Seconds this process has spent writing to each replica so far (``bench`` reports the
    difference over its pipeline phase)."""
    return dict(_seconds_by_replica)
