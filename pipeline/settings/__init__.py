"""Process-wide settings: environment (``PIPELINE_`` prefix, ``__`` nesting) over an optional TOML file.

Precedence, highest first: keyword arguments, environment variables, the TOML file
given with ``--config`` (or ``PIPELINE_CONFIG``), defaults.  Every component gets its
own frozen section, defined next to the sections of the same side (``ingest``, ``storage``,
``cluster``, ``serving``); secrets are :class:`~pydantic.SecretStr` and print as ``**********``.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from pipeline.settings.cluster import RaySettings, ScalingSettings, StackSettings
from pipeline.settings.embedder import EmbedderSettings
from pipeline.settings.ingest import ChunkingSettings, ConsumerSettings, KafkaSettings
from pipeline.settings.serving import ApiSettings, SearchSettings
from pipeline.settings.storage import MilvusSettings, ReplicaSettings
from workers.errors import ConfigError
from workers.reranker_settings import RerankerSettings
from workers.settings import BatchSettings, ModelSettings, PoolSettings

__all__ = [
    "ApiSettings",
    "BatchSettings",
    "ChunkingSettings",
    "ConsumerSettings",
    "EmbedderSettings",
    "KafkaSettings",
    "MilvusSettings",
    "ModelSettings",
    "PoolSettings",
    "RaySettings",
    "ReplicaSettings",
    "RerankerSettings",
    "ScalingSettings",
    "SearchSettings",
    "Settings",
    "StackSettings",
    "load_settings",
]


def _renamed(name: str, old_name: str) -> AliasChoices:
    """A section read under its name or the name it had before (TOML, keyword or ``PIPELINE_*``)."""
    return AliasChoices(name, f"PIPELINE_{name.upper()}", old_name, f"PIPELINE_{old_name.upper()}")


# The TOML file of the load_settings() call in progress (then PIPELINE_CONFIG): no global state left behind.
_config_file: ContextVar[str | None] = ContextVar("pipeline_config_file", default=None)


class Settings(BaseSettings):
    """All settings of one process; sections [replicas] and [consumer] were [embedding] and [worker]."""

    model_config = SettingsConfigDict(
        env_prefix="PIPELINE_", env_nested_delimiter="__", frozen=True, extra="forbid", populate_by_name=True
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings, description="Kafka client and topics.")
    model: ModelSettings = Field(default_factory=ModelSettings, description="Embedding model.")
    batching: BatchSettings = Field(default_factory=BatchSettings, description="Actor micro-batching.")
    pool: PoolSettings = Field(default_factory=PoolSettings, description="Embedder actor pool.")
    embedder: EmbedderSettings = Field(
        default_factory=EmbedderSettings, description="Embedder backend: the actors, or a remote endpoint."
    )
    replicas: ReplicaSettings = Field(
        default_factory=ReplicaSettings,
        validation_alias=_renamed("replicas", "embedding"),
        description="Matryoshka dimension replicas.",
    )
    chunking: ChunkingSettings = Field(default_factory=ChunkingSettings, description="Document chunking.")
    milvus: MilvusSettings = Field(default_factory=MilvusSettings, description="Milvus replicas.")
    ray: RaySettings = Field(default_factory=RaySettings, description="Ray cluster.")
    consumer: ConsumerSettings = Field(
        default_factory=ConsumerSettings,
        validation_alias=_renamed("consumer", "worker"),
        description="Kafka consumer loop bounds.",
    )
    stack: StackSettings = Field(default_factory=StackSettings, description="Local embedded stack.")
    scaling: ScalingSettings = Field(default_factory=ScalingSettings, description="Scale-out on Ray.")
    search: SearchSettings = Field(default_factory=SearchSettings, description="Search and routing.")
    api: ApiSettings = Field(default_factory=ApiSettings, description="HTTP API.")
    reranker: RerankerSettings | None = Field(
        None,
        description="Reranker stage (search --rerank, POST /v1/rerank, eval-recall's rerank latency); "
        "absent: none.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = _config_file.get() or os.environ.get("PIPELINE_CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_path:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(toml_path)))
        return tuple(sources)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read settings from the environment and ``config_file`` (TOML); raises ConfigError when invalid."""
    if config_file is not None and not config_file.is_file():
        raise ConfigError(f"config file {config_file} does not exist")
    token = _config_file.set(str(config_file) if config_file is not None else None)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"invalid settings: {problems}") from exc
    finally:
        _config_file.reset(token)
