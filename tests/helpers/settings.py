"""Settings of a test that must not share state with any other: a topic, dead-letter topic and consumer
group of its own (``{name}-{run}``), a Milvus collection prefix of its own (``{name}_{run}``) and, when
asked, a Ray namespace of its own; the rest is what the test asks for."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.settings import (
    ChunkingSettings,
    ConsumerSettings,
    KafkaSettings,
    MilvusSettings,
    RaySettings,
    ReplicaSettings,
    Settings,
)
from workers.settings import ModelSettings, PoolSettings


def private_kafka(bootstrap: str, name: str = "t", **options: Any) -> KafkaSettings:
    """Kafka settings on a fresh topic ``{name}-{run}``, its ``.dlq`` and a group of the same name."""
    run = f"{name}-{uuid.uuid4().hex[:8]}"
    return KafkaSettings(
        bootstrap_servers=bootstrap, topic=run, dlq_topic=f"{run}.dlq", group_id=run, **options
    )


def private_settings(
    bootstrap: str,
    milvus_uri: str | None = None,
    model_path: Path | None = None,
    *,
    name: str = "t",
    kafka: Mapping[str, Any] | None = None,
    consumer: Mapping[str, Any] | None = None,
    pool: Mapping[str, Any] | None = None,
    milvus: Mapping[str, Any] | None = None,
    dims: tuple[int, ...] | None = None,
    max_tokens: int | None = None,
    ray_namespace: bool = False,
    **sections: Any,
) -> Settings:
    """Settings on a private topic, group and (with ``milvus_uri``) collection prefix.

    ``kafka``, ``consumer``, ``pool`` and ``milvus`` are options of their section, over these defaults:
    the consumer commits every 0.3 s; with ``model_path`` the model is that folder on a pool of one
    actor; Milvus indexes are FLAT.  ``dims`` are the replica dimensions and ``max_tokens`` the
    chunk size (both left at their defaults when None); ``ray_namespace`` gives the named actors a
    namespace ``{name}-{run}``.  ``sections`` are whole sections, as :class:`Settings` takes them.
    """
    kafka_settings = private_kafka(bootstrap, name, **(kafka or {}))
    run = kafka_settings.topic
    values: dict[str, Any] = {
        "kafka": kafka_settings,
        "consumer": ConsumerSettings(**({"commit_interval_s": 0.3} | dict(consumer or {}))),
    }
    if milvus_uri is not None:
        prefix = run.replace("-", "_")
        values["milvus"] = MilvusSettings(
            **({"uri": milvus_uri, "collection_prefix": prefix, "index_type": "FLAT"} | dict(milvus or {}))
        )
    if model_path is not None:
        values["model"] = ModelSettings(name_or_path=str(model_path))
    # Actors die with the test's worker unless a test asks for shared (detached) ones: the session's
    # Ray cluster would otherwise collect every test's actors.
    values["pool"] = PoolSettings(
        **({"detached": False} | ({"num_actors": 1} if model_path is not None else {}) | dict(pool or {}))
    )
    if dims is not None:
        values["replicas"] = ReplicaSettings(dims=dims)
    if max_tokens is not None:
        values["chunking"] = ChunkingSettings(max_tokens=max_tokens)
    if ray_namespace:
        values["ray"] = RaySettings(namespace=run)
    return Settings(**(values | sections))


def write_toml(settings: Settings, path: Path) -> Path:
    """``settings`` as the TOML file of ``--config`` (every section; unset values left out)."""
    lines: list[str] = []
    for section, values in settings.model_dump(mode="json", exclude_none=True).items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {json.dumps(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines))
    return path
