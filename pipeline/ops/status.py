"""`status`: broker, Milvus, Ray, consumer lag per partition and rows per replica, in one report."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from pymilvus.client.types import LoadState

from pipeline.ingest.kafka import broker_reachable, partition_lag
from pipeline.milvus.connection import MilvusConnection
from pipeline.milvus.errors import CollectionNotLoaded
from pipeline.milvus.schema import count_rows
from pipeline.settings import Settings

_MILVUS_PROBE_TIMEOUT_S = 5.0
NOT_LOADED = "not loaded (released: the next search or write loads it)"
"""What `status` says of a released replica instead of its rows."""


@dataclass
class StatusReport:
    """What `status` found; every probe records an error string instead of raising.  ``replicas``
    holds each replica's row count, or why it has none (e.g. :data:`NOT_LOADED`)."""

    broker: str = "unknown"
    lag: dict[int, tuple[int, int]] = field(default_factory=dict)
    dlq_records: int | None = None
    milvus: str = "unknown"
    replicas: dict[str, int | str] = field(default_factory=dict)
    ray: str = "unknown"

    def replica_lines(self) -> list[str]:
        """One indented line per replica: its rows, or why they were not counted."""
        return [
            f"  {name}: {rows} rows" if isinstance(rows, int) else f"  {name}: {rows}"
            for name, rows in sorted(self.replicas.items())
        ]

    def render(self, settings: Settings) -> str:
        kafka = settings.kafka
        lines = [f"broker   {kafka.bootstrap_servers}: {self.broker}"]
        if self.lag:
            total = sum(hw - committed for committed, hw in self.lag.values())
            lines.append(f"  topic {kafka.topic}, group {kafka.group_id}: lag {total}")
            for partition, (committed, hw) in sorted(self.lag.items()):
                lines.append(
                    f"    partition {partition}: committed {committed}, end {hw}, lag {hw - committed}"
                )
        if self.dlq_records is not None:
            lines.append(f"  dead-letter topic {kafka.dlq_topic}: {self.dlq_records} records")
        lines.append(f"milvus   {settings.milvus.uri}: {self.milvus}")
        lines += self.replica_lines()
        lines.append(f"ray      {self.ray}")
        return "\n".join(lines)


async def collect_status(settings: Settings) -> StatusReport:
    """Probe every component; unreachable ones are reported, not raised."""
    report = StatusReport()
    if await broker_reachable(settings.kafka):
        report.broker = "up"
        report.lag = await partition_lag(settings.kafka, settings.kafka.topic)
        dlq = await partition_lag(settings.kafka, settings.kafka.dlq_topic)
        report.dlq_records = sum(hw for _, hw in dlq.values())
    else:
        report.broker = "unreachable"
    report.milvus, report.replicas = await asyncio.to_thread(_milvus_rows, settings)
    report.ray = _ray_summary(settings)  # ray.init wants the main thread (it installs a SIGTERM handler)
    return report


def _milvus_rows(settings: Settings) -> tuple[str, dict[str, int | str]]:
    """Milvus' state and what each replica ``{prefix}_{dim}`` holds; never raises.  An observer: a
    released replica is reported, not loaded."""
    timeout_s = min(settings.milvus.timeout_s, _MILVUS_PROBE_TIMEOUT_S)
    connection = MilvusConnection(settings.milvus.model_copy(update={"timeout_s": timeout_s}))
    prefix = f"{settings.milvus.collection_prefix}_"
    try:
        try:
            names = connection.call("listing collections", "list_collections")
        except Exception as exc:  # any failure to connect or list is a status line, not a crash
            return f"unreachable ({type(exc).__name__}: {exc})", {}
        replicas = [name for name in names if name.startswith(prefix) and name[len(prefix) :].isdigit()]
        return "up", {name: _replica_rows(connection, name) for name in replicas}
    finally:
        connection.close()


def _replica_rows(connection: MilvusConnection, name: str) -> int | str:
    """The rows of collection ``name``, or why they were not counted."""
    try:
        # Milvus refuses to count a released collection and Milvus Lite counts it: ask first.
        state = connection.call(f"reading the load state of {name}", "get_load_state", name)["state"]
        if state != LoadState.Loaded:
            return NOT_LOADED if state == LoadState.NotLoad else f"not counted (load state {state})"
        return count_rows(connection, name)
    except CollectionNotLoaded:  # released since
        return NOT_LOADED
    except Exception as exc:  # status reports, it never raises
        return f"not counted ({type(exc).__name__}: {exc})"


def _ray_summary(settings: Settings) -> str:
    import ray

    from pipeline.runtime.ray_cluster import connect_ray

    if settings.ray.address is None:  # the CLI points it at the local stack's head when that runs
        return "no cluster configured (ray.address unset, local stack not running)"
    try:
        connect_ray(settings)
        resources = ray.cluster_resources()
        actors = [
            a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("embedder-")
        ]
    except Exception as exc:  # status must report, not crash
        return f"unreachable ({type(exc).__name__}: {exc})"
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    return f"up: {len(ray.nodes())} node(s), {cpus:g} CPU, {gpus:g} GPU, {len(actors)} embedder actor(s)"
