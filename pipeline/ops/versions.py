"""`versions list | switch N | drop N`: the replica sets of ``milvus.collection_prefix``, which one serves,
and moving ``search``, ``serve`` and ``run`` to another (see :mod:`pipeline.runtime.versions`)."""

from __future__ import annotations

import asyncio

from aiokafka.errors import KafkaError

from pipeline.ingest.kafka import partition_lag
from pipeline.milvus.connection import MilvusConnection
from pipeline.milvus.model_stamp import ModelStamp
from pipeline.milvus.schema import collection_properties, count_rows, ensure_replicas
from pipeline.runtime.versions import list_versions, serving_version, set_serving, version_settings
from pipeline.settings import Settings
from workers.errors import ConfigError


def _replicas(settings: Settings) -> tuple[int, dict[int, dict[int, str]]]:
    connection = MilvusConnection(settings.milvus)
    try:
        prefix = settings.milvus.collection_prefix
        return serving_version(connection, prefix), list_versions(connection, prefix)
    finally:
        connection.close()


Described = tuple[dict[str, int], dict[str, ModelStamp | None]]


def _describe(settings: Settings, names: dict[int, str]) -> Described:
    """Rows and stamp of each replica in ``names`` (loaded first: Milvus counts only loaded ones)."""
    connection = MilvusConnection(settings.milvus)
    try:
        ensure_replicas(connection, settings.milvus, names)
        rows = {name: count_rows(connection, name) for name in names.values()}
        stamps = {n: ModelStamp.from_properties(collection_properties(connection, n)) for n in names.values()}
        return rows, stamps
    finally:
        connection.close()


async def _lag(settings: Settings) -> int | None:
    """Events the version's group is behind the topic; None when the broker cannot be asked."""
    try:
        lag = await partition_lag(settings.kafka, settings.kafka.topic)
    except KafkaError:
        return None
    return sum(end - committed for committed, end in lag.values())


async def list_report(settings: Settings) -> str:
    """Every version: serving or not, its group's lag, and each replica's rows and model."""
    serving, versions = await asyncio.to_thread(_replicas, settings)
    if not versions:
        prefix = settings.milvus.collection_prefix
        return f"no replicas of {prefix} yet (`python -m pipeline run` creates them)"
    lines = []
    for number, names in versions.items():
        target = version_settings(settings, number)
        rows, stamps = await asyncio.to_thread(_describe, target, names)
        mark = "serving" if number == serving else "not serving"
        lag = await _lag(target)
        shown = "unknown (broker unreachable)" if lag is None else lag
        lines.append(f"version {number} ({mark}): group {target.kafka.group_id}, lag {shown}")
        for name in names.values():
            stamp = stamps[name]
            made_by = stamp.describe() if stamp else "no model recorded (made before stamps; `run --adopt`)"
            lines.append(f"  {name}: {rows[name]} rows, {made_by}")
    if serving not in versions:
        lines.append(f"version {serving} is serving but has no replicas")
    return "\n".join(lines)


async def switch(settings: Settings, number: int, *, force: bool = False) -> str:
    """Make version ``number`` the serving one, after the checks of the module docstring of
    :mod:`pipeline.runtime.versions` (ConfigError naming what is not ready, unless ``force``)."""
    serving, versions = await asyncio.to_thread(_replicas, settings)
    target = version_settings(settings, number)
    names = versions.get(number)
    if not names:
        raise ConfigError(
            f"version {number} has no replicas: fill it first with "
            f"`python -m pipeline run --into-version {number}`"
        )
    problems = []
    wanted = settings.replicas.dims
    if missing := sorted(set(wanted) - set(names), reverse=True):
        problems.append(f"replicas.dims asks for {missing}, which version {number} lacks")
    rows, stamps = await asyncio.to_thread(_describe, target, names)
    if unstamped := [name for name, stamp in stamps.items() if stamp is None]:
        problems.append(f"{', '.join(unstamped)} record no model (`run --adopt` records it)")
    if len(set(rows.values())) > 1:
        problems.append(f"its replicas hold different row counts ({rows}): one is behind")
    lag = await _lag(target)
    if lag is None:
        problems.append(f"the broker cannot be asked how far its group {target.kafka.group_id} is behind")
    elif lag:
        problems.append(f"its consumer group {target.kafka.group_id} is {lag} events behind the topic")
    if problems and not force:
        raise ConfigError(
            f"version {number} is not ready to serve: {'; '.join(problems)}. Let `python -m pipeline run "
            f"--into-version {number}` catch up (check with `python -m pipeline versions list`), or switch "
            f"anyway with --force."
        )
    connection = MilvusConnection(settings.milvus)
    try:
        await asyncio.to_thread(set_serving, connection, settings.milvus.collection_prefix, number)
    finally:
        connection.close()
    return (
        f"version {number} now serves (was {serving}): `search` and `serve` read "
        f"{', '.join(names.values())}. "
        f"Keep `python -m pipeline run --into-version {number}` running, or restart the worker as "
        f"`python -m pipeline run` (it follows the serving version and resumes group "
        f"{target.kafka.group_id})."
    )


async def drop(settings: Settings, number: int) -> str:
    """Drop the replicas of version ``number``; ConfigError for the serving one."""
    serving, versions = await asyncio.to_thread(_replicas, settings)
    if number == serving:
        raise ConfigError(f"version {number} is serving: switch to another first (`versions switch N`)")
    names = versions.get(number, {})
    connection = MilvusConnection(settings.milvus)
    try:
        for name in names.values():
            await asyncio.to_thread(connection.call, f"dropping {name}", "drop_collection", name)
    finally:
        connection.close()
    old = version_settings(settings, number)
    dropped = ", ".join(names.values()) or "nothing (it had no replicas)"
    return (
        f"dropped {dropped}; its consumer group {old.kafka.group_id} keeps its offsets. Stop its worker if "
        f"one runs, then its embedder actors (detached, they outlive it): "
        f"`PIPELINE_RAY__NAMESPACE={old.ray.namespace} python -m pipeline stop-embedders`"
    )
