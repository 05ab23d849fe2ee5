"""Versions: sets of replicas, one per model, filled side by side and switched when complete.

Version 1 is what ``milvus.collection_prefix`` (P), ``kafka.group_id`` (G) and ``ray.namespace`` (R) name:
replicas ``P_{dim}``, group G, actors in R.  Version N > 1 has replicas ``P_vN_{dim}``, its own consumer
group ``G-vN`` (so it reads the topic from the beginning, by itself) and its own actors in ``R-vN`` (so
its model loads beside the serving one).  The *serving* version is recorded in the collection property
``embedstream.serving`` of a marker collection ``P_versions`` (none: version 1).  ``run``, ``search``,
``serve`` and ``status`` work on the serving version; ``run --into-version N`` fills version N.

Why a record and not one Milvus alias per replica: a funnel search reads two replicas, and aliases switch
one at a time, so a search during a switch could shortlist in one version and rescore in the other; and
the existing replicas already own the names ``P_{dim}`` an alias would need.  A search resolves the
record once and reads every replica of that one version.

Guarantees:

* A worker never writes a replica made by another model (:mod:`pipeline.milvus.model_stamp`) and never
  creates a replica that would start empty beside replicas of its version that hold rows (a dimension
  added to ``replicas.dims`` later): both are refused, the message says how to fill a new version.
* :func:`switch` moves the record only when the version's replicas all exist, are stamped, hold the
  same number of rows, and its consumer group has no lag (``--force`` skips these checks).
* :func:`drop` never drops the serving version.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping
from typing import Any

from pymilvus import DataType, MilvusClient

from pipeline.ingest.retry import Backoff
from pipeline.milvus.connection import MilvusConnection
from pipeline.milvus.errors import SinkUnavailable
from pipeline.milvus.model_stamp import ModelStamp, check_stamps
from pipeline.milvus.schema import collection_properties, count_rows, ensure_replicas
from pipeline.settings import Settings
from workers.errors import ConfigError

log = logging.getLogger(__name__)

SERVING = "embedstream.serving"
"""Property of the marker collection ``{prefix}_versions``: the number of the serving version."""


def version_settings(settings: Settings, number: int) -> Settings:
    """``settings`` (those of version 1, as configured) turned to version ``number``: its collection
    prefix, consumer group and Ray namespace.  A query task set for the prefix applies to every version."""
    if number < 1:
        raise ConfigError(f"versions are numbered from 1, got {number}")
    if number == 1:
        return settings
    base = settings.milvus.collection_prefix
    prefix = f"{base}_v{number}"
    tasks = dict(settings.search.collection_tasks)
    if base in tasks:
        tasks[prefix] = tasks[base]
    return settings.model_copy(
        update={
            "milvus": settings.milvus.model_copy(update={"collection_prefix": prefix}),
            "kafka": settings.kafka.model_copy(update={"group_id": f"{settings.kafka.group_id}-v{number}"}),
            "ray": settings.ray.model_copy(update={"namespace": f"{settings.ray.namespace}-v{number}"}),
            "search": settings.search.model_copy(update={"collection_tasks": tasks}),
        }
    )


def fill_settings(settings: Settings, number: int) -> Settings:
    """The settings of ``run --into-version number``: version ``number``, read from the topic's start
    (its group has no offsets the first time; a fill that was stopped resumes from its own)."""
    target = version_settings(settings, number)
    kafka = target.kafka.model_copy(update={"auto_offset_reset": "earliest"})
    return target.model_copy(update={"kafka": kafka})


def _marker(prefix: str) -> str:
    return f"{prefix}_versions"


def serving_version(connection: MilvusConnection, prefix: str) -> int:
    """The serving version of the replicas of base ``prefix`` (1 when none was switched to)."""
    marker = _marker(prefix)
    if not connection.call(f"looking up {marker}", "has_collection", marker):
        return 1
    return int(collection_properties(connection, marker).get(SERVING, "1"))


def set_serving(connection: MilvusConnection, prefix: str, number: int) -> None:
    """Record version ``number`` as the serving one of base ``prefix`` (one property change)."""
    marker = _marker(prefix)
    if not connection.call(f"looking up {marker}", "has_collection", marker):
        # Milvus wants a vector field in every collection; this one never holds a row.
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=8)
        schema.add_field("unused", DataType.FLOAT_VECTOR, dim=2)
        connection.call(f"creating {marker}", "create_collection", marker, schema=schema)
    connection.call(
        f"recording the serving version in {marker}",
        "alter_collection_properties",
        marker,
        properties={SERVING: str(number)},
    )


def list_versions(connection: MilvusConnection, prefix: str) -> dict[int, dict[int, str]]:
    """Every version of base ``prefix`` that has replicas: number -> {dim: collection}."""
    pattern = re.compile(rf"{re.escape(prefix)}_(?:v(\d+)_)?(\d+)")
    found: dict[int, dict[int, str]] = {}
    for name in connection.call("listing collections", "list_collections"):
        if match := pattern.fullmatch(name):
            found.setdefault(int(match.group(1) or 1), {})[int(match.group(2))] = name
    return {n: dict(sorted(d.items(), reverse=True)) for n, d in sorted(found.items())}


def fill_advice(settings: Settings, number: int | None = None) -> str:
    """What to run to fill a new version (``number``, default the one after the last) and switch to it."""
    n = number or "N"
    return (
        f"fill a new version from the topic while this one keeps serving: `python -m pipeline run "
        f"--into-version {n}` (new collections {settings.milvus.collection_prefix}_v{n}_<dim>, consumer "
        f"group {settings.kafka.group_id}-v{n}), then `python -m pipeline versions switch {n}` once it has "
        f"caught up, and `python -m pipeline versions drop <old>` when nothing reads the old one."
    )


def prepare_replicas(
    base: Settings, target: Settings, stamp: ModelStamp, dims: tuple[int, ...], *, adopt: bool = False
) -> None:
    """Before a worker writes version ``target``'s replicas of ``dims``: refuse a replica that would start
    empty beside ones holding rows, create the missing ones stamped with ``stamp``, and refuse replicas
    made by another model (see the module docstring).  ``base``: the settings as configured (version 1)."""
    connection = MilvusConnection(target.milvus)
    try:
        names = {dim: f"{target.milvus.collection_prefix}_{dim}" for dim in dims}
        existing = {d: n for d, n in names.items() if connection.call(f"looking up {n}", "has_collection", n)}
        advice = fill_advice(base, _next_version(connection, base.milvus.collection_prefix))
        if existing and len(existing) < len(names):
            ensure_replicas(connection, target.milvus, existing)  # loaded, to be counted
            held = {n: count_rows(connection, n) for n in existing.values()}
            if any(held.values()):
                added = sorted(set(names) - set(existing), reverse=True)
                raise ConfigError(
                    f"replicas.dims asks for {added}, which {target.milvus.collection_prefix} lacks while "
                    f"its replicas hold rows ({_counts(held)}): a replica created now would miss every "
                    f"document written before. Keep replicas.dims as it was for this version's worker, "
                    f"and {advice}"
                )
        ensure_replicas(connection, target.milvus, names, properties=stamp.properties())
        check_stamps(connection, names, stamp, adopt=adopt, fix=advice)
    finally:
        connection.close()


def readable_replicas(
    base: Settings, target: Settings, stamp: ModelStamp, dims: tuple[int, ...]
) -> tuple[int, ...]:
    """The replicas of ``dims`` that version ``target`` has, after checking they were made by ``stamp``'s
    model (ConfigError otherwise): what ``search`` and ``serve`` may read.  All of ``dims`` when the
    version has no replica yet (nothing was written: searches find nothing)."""
    connection = MilvusConnection(target.milvus)
    try:
        prefix = target.milvus.collection_prefix
        names = {d: f"{prefix}_{d}" for d in dims}
        existing = {d: n for d, n in names.items() if connection.call(f"looking up {n}", "has_collection", n)}
        if not existing:
            return dims
        ensure_replicas(connection, target.milvus, existing)
        check_stamps(connection, existing, stamp, fix=fill_advice(base))
        return tuple(existing)
    finally:
        connection.close()


def _next_version(connection: MilvusConnection, prefix: str) -> int:
    return max([1, *list_versions(connection, prefix)]) + 1


def _counts(rows: Mapping[str, Any]) -> str:
    return ", ".join(f"{name}: {count}" for name, count in rows.items())


def _serving(settings: Settings) -> int:
    connection = MilvusConnection(settings.milvus)
    try:
        return serving_version(connection, settings.milvus.collection_prefix)
    finally:
        connection.close()


async def serving_settings(settings: Settings, attempts: int = 6) -> Settings:
    """``settings`` (as configured) turned to the serving version, waiting out a Milvus still starting."""
    backoff = Backoff(base=1.0, cap=settings.consumer.retry_backoff_max_s)
    for attempt in range(1, attempts + 1):
        try:
            return version_settings(settings, await asyncio.to_thread(_serving, settings))
        except SinkUnavailable as exc:
            if attempt == attempts:
                raise
            delay = backoff.next(exc.retry_after)
            log.warning("Milvus not reachable yet (%s); retrying in %.1fs", exc, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
