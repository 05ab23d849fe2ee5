"""Settings of where things run: the Ray cluster, scale-out, and the local stack."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr

from pipeline.settings.base import Section


class RaySettings(Section):
    """How a process (`run`, `serve`, `search`, the tools) joins a Ray cluster."""

    address: str | None = Field(
        None, description="Ray cluster address (host:port or 'auto'); empty starts a private local Ray."
    )
    auth_token: SecretStr | None = Field(
        None, description="Ray token for clusters with RAY_AUTH_MODE=token (never logged)."
    )
    auth_token_path: Path | None = Field(
        None, description="File holding the Ray token instead of auth_token."
    )
    namespace: str = Field("embedstream", description="Ray namespace of the named actors.")


class ScalingSettings(Section):
    """Scale-out on a Ray cluster: consumers as Ray actors, placed by resources."""

    _ordered = (("min_embedders", "max_embedders", False),)
    consumer_actors: int = Field(
        0,
        ge=0,
        description="Consumer-group members to run as Ray actors (consumer-0, ...); 0 consumes in the "
        "`run` process itself. `run --consumer-actors N` overrides it.",
    )
    consumer_cpus: float = Field(1.0, gt=0, description="CPUs each consumer actor asks Ray for.")
    consumer_resources: dict[str, float] = Field(
        default_factory=dict,
        description="Custom Ray resources each consumer actor asks for (JSON object in env); empty: any.",
    )
    autoscale: bool = Field(
        False, description="Grow and shrink the embedder pool by backlog (consumer lag and queued tokens)."
    )
    min_embedders: int = Field(1, ge=1, description="Fewest embedder actors when autoscaling.")
    max_embedders: int = Field(4, ge=1, description="Most embedder actors when autoscaling (>= the fewest).")
    lag_per_embedder: int = Field(
        5000, ge=1, description="Consumer lag (events) one embedder actor is expected to work off."
    )
    queued_tokens_per_embedder: int = Field(
        131072, ge=1, description="Tokens queued in the actors that justify one embedder actor."
    )
    scale_down_after_s: float = Field(
        120.0, ge=0, description="How long the backlog must ask for fewer actors before one is removed."
    )
    cooldown_s: float = Field(30.0, ge=0, description="Least time between two changes of the pool size.")
    check_interval_s: float = Field(10.0, gt=0, description="How often the autoscaler observes the backlog.")


class StackSettings(Section):
    """The embedded local stack of `up` / `down`."""

    data_dir: Path = Field(Path(".stack"), description="Folder holding every local service's state and logs.")
    kafka_port: int = Field(9092, ge=1, le=65535, description="Port of the local Tansu broker.")
    milvus_port: int = Field(19530, ge=1, le=65535, description="Port of the local milvus-lite server.")
    ray_port: int = Field(6379, ge=1, le=65535, description="GCS port of the local Ray head.")
    dashboard_port: int = Field(8265, ge=1, le=65535, description="Port of the Ray dashboard (127.0.0.1).")
    ray_num_cpus: int | None = Field(None, ge=1, description="CPUs the Ray head offers; default all.")
    ray_resources: dict[str, float] = Field(
        default_factory=dict, description="Custom resources the Ray head offers (JSON object in env)."
    )
