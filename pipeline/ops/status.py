"""`status`: broker, Milvus, Ray, consumer lag per partition and rows per replica, in one report."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from pipeline.ingest.kafka import broker_reachable, partition_lag
from pipeline.milvus.connection import open_client
from pipeline.settings import Settings


@dataclass
class StatusReport:
    """What `status` found; every probe records an error string instead of raising."""

    broker: str = "unknown"
    lag: dict[int, tuple[int, int]] = field(default_factory=dict)
    dlq_records: int | None = None
    milvus: str = "unknown"
    replicas: dict[str, int] = field(default_factory=dict)
    ray: str = "unknown"

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
        for name, rows in sorted(self.replicas.items()):
            lines.append(f"  {name}: {rows} rows")
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


def _milvus_rows(settings: Settings) -> tuple[str, dict[str, int]]:
    milvus = settings.milvus
    token = milvus.token.get_secret_value() if milvus.token else ""
    try:
        client = open_client(milvus.uri, token=token, db_name=milvus.db_name, timeout=5)
    except Exception as exc:  # any connection failure is a status line, not a crash
        return f"unreachable ({type(exc).__name__})", {}
    try:
        prefix = f"{milvus.collection_prefix}_"
        rows: dict[str, int] = {}
        for name in client.list_collections():
            if name.startswith(prefix) and name[len(prefix) :].isdigit():
                result = client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
                rows[name] = int(result[0]["count(*)"])
        return "up", rows
    finally:
        client.close()


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
