"""Process-wide settings: environment (``PIPELINE_`` prefix, ``__`` nesting) over an optional TOML file.

Precedence, highest first: keyword arguments, environment variables, the TOML file
given with ``--config`` (or ``PIPELINE_CONFIG``), defaults.  Every component gets its
own frozen section; secrets are :class:`~pydantic.SecretStr` and print as ``**********``.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    SecretStr,
    ValidationError,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from workers.errors import ConfigError
from workers.model.matryoshka import validate_dims
from workers.settings import BatchSettings, ModelSettings, PoolSettings


class _Section(BaseModel):
    """A frozen settings section that refuses unknown keys and contradictory values (``_ordered``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    _ordered: ClassVar[tuple[tuple[str, str, bool], ...]] = ()  # (low, high, strict): low <= high (<)

    @model_validator(mode="after")
    def _in_order(self) -> Self:
        for low, high, strict in self._ordered:
            if (a := getattr(self, low)) > (b := getattr(self, high)) or (strict and a == b):
                raise ValueError(f"{low} ({a}) must be {'below' if strict else 'at most'} {high} ({b})")
        return self


class KafkaSettings(_Section):
    """How the consumers and producers reach Kafka, and which topics they use."""

    _ordered = (("heartbeat_interval_ms", "session_timeout_ms", True),)
    bootstrap_servers: str = Field("127.0.0.1:9092", description="Comma-separated host:port list of brokers.")
    topic: str = Field("documents", description="Topic the document events are read from.")
    group_id: str = Field("embedstream", description="Consumer group of the ingestion consumers.")
    dlq_topic: str = Field("documents.dlq", description="Topic of the events that cannot be ingested.")
    dlq_max_record_bytes: int = Field(
        1_000_000,
        ge=1024,
        description="Most key + value bytes of one dead-letter record (keep under the broker's "
        "message.max.bytes); a larger rejected event is dead-lettered cut to fit, with a "
        "'truncated_from' header.",
    )
    partitions: int = Field(4, ge=1, description="Partitions of the topic when it is created.")
    auto_offset_reset: Literal["earliest", "latest"] = Field(
        "earliest", description="Where a group with no committed offset starts."
    )
    max_poll_records: int = Field(500, ge=1, description="Most records one poll returns.")
    session_timeout_ms: int = Field(
        10000,
        ge=1000,
        description="How long the group coordinator waits for a silent member (a killed consumer) "
        "before giving its partitions to the others; a restarted consumer waits that long too.",
    )
    heartbeat_interval_ms: int = Field(
        3000,
        ge=100,
        description="How often the consumer heartbeats; keep it under a third of the session timeout.",
    )
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol."
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism when the protocol is SASL_*."
    )
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (never logged).")
    ssl_cafile: Path | None = Field(None, description="CA bundle that signs the brokers' certificates.")
    ssl_certfile: Path | None = Field(None, description="Client certificate for mutual TLS.")
    ssl_keyfile: Path | None = Field(None, description="Private key of the client certificate.")


class MilvusSettings(_Section):
    """Where the dimension replicas live and how they are indexed."""

    _ordered = (("ivf_nprobe", "ivf_nlist", False),)
    uri: str = Field(
        "http://127.0.0.1:19530", description="Milvus URI (http://host:port, or a local .db path)."
    )
    token: SecretStr | None = Field(None, description="Milvus token or 'user:password' (never logged).")
    db_name: str = Field("", description="Milvus database; empty means the server's default.")
    collection_prefix: str = Field(
        "documents",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Replica collections are '{prefix}_{dim}'.",
    )
    index_type: Literal["HNSW", "FLAT", "IVF_FLAT", "AUTOINDEX"] = Field("HNSW", description="Vector index.")
    hnsw_m: int = Field(16, ge=2, le=2048, description="HNSW graph degree.")
    hnsw_ef_construction: int = Field(200, ge=8, description="HNSW build-time candidate list size.")
    search_ef: int = Field(128, ge=1, description="HNSW search-time candidate list size.")
    ivf_nlist: int = Field(1024, ge=1, le=65536, description="IVF_FLAT clusters built per replica.")
    ivf_nprobe: int = Field(
        32, ge=1, le=65536, description="IVF_FLAT clusters searched per query (Milvus wants <= ivf_nlist)."
    )
    max_call_rows: int = Field(5000, ge=1, description="Most rows in one upsert call (more: split).")
    max_call_bytes: int = Field(
        16 * 1024 * 1024,
        ge=1,
        description="Most bytes (estimated) in one upsert call; keep well under the server's gRPC "
        "message limit (64 MiB by default). A single larger row is sent alone.",
    )
    timeout_s: float = Field(30.0, gt=0, description="Timeout of one Milvus call.")


def _widest_first(dims: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sorted(set(dims), reverse=True))


class ReplicaSettings(_Section):
    """Which Matryoshka dimensions are kept: one Milvus collection ("replica") each (section
    [replicas], formerly [embedding])."""

    dims: Annotated[tuple[PositiveInt, ...], AfterValidator(_widest_first)] = Field(
        (),
        description="Replica dimensions (JSON list in env). The model's native dimension is always "
        "added; every entry must be <= it.",
    )

    def replica_dims(self, native_dim: int) -> tuple[int, ...]:
        """The dimensions to write, widest first, the native one included; ConfigError if one
        exceeds ``native_dim``.  Computed once when a runtime is assembled and passed down."""
        validate_dims(self.dims or (native_dim,), native_dim, what="replicas.dims")
        return tuple(sorted({*self.dims, native_dim}, reverse=True))


class ChunkingSettings(_Section):
    """How long documents are split into rows."""

    max_tokens: int | None = Field(
        None,
        ge=16,
        description="Most tokens in one chunk (special tokens excluded); default: what the model takes, "
        "at most 512.",
    )
    overlap_tokens: int = Field(0, ge=0, description="Tokens repeated from the end of the previous chunk.")


class RaySettings(_Section):
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


class ConsumerSettings(_Section):
    """The Kafka consumer loop's bounds (section [consumer], formerly [worker])."""

    max_inflight_tokens: int = Field(
        131072, ge=64, description="Tokens sent to the pool and not yet written; partitions pause above it."
    )
    max_batch_events: int = Field(256, ge=1, description="Most events of one partition handled as one unit.")
    max_request_tokens: int = Field(
        16384, ge=64, description="Most tokens in one embed call to the pool (a unit is split above it)."
    )
    commit_interval_s: float = Field(1.0, gt=0, description="How often acknowledged offsets are committed.")
    retry_backoff_max_s: float = Field(30.0, gt=0, description="Cap of the exponential backoff on retries.")
    shutdown_drain_s: float = Field(
        30.0, ge=0, description="On stop, how long units in flight may finish before they are dropped."
    )


class ScalingSettings(_Section):
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


class StackSettings(_Section):
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


class SearchSettings(_Section):
    """The read side: query tasks, funnel search and routing."""

    default_task: str | None = Field(
        "Given a web search query, retrieve relevant passages that answer the query",
        description="Task of queries without one, for instruction-aware models (Qwen3-Embedding gets "
        "'Instruct: {task}\\nQuery:{q}'); other models get the raw query.",
    )
    collection_tasks: dict[str, str] = Field(
        default_factory=dict,
        description="Default task per collection prefix (overrides default_task for that collection).",
    )
    funnel_factor: int = Field(
        50,
        ge=1,
        le=1000,
        description="Funnel search shortlists top_k × this many chunks on the small replica; a search "
        "that would ask Milvus for more than 16,384 hits per query is refused.",
    )
    profile_path: Path | None = Field(
        None,
        description="eval-recall's JSON (measured recall/latency per strategy, `python -m pipeline "
        "eval-recall --out DIR` writes DIR/recall.json) that routing reads; unset: nothing was measured, "
        "so a recall target or latency budget is answered by the native replica (exact), saying why.",
    )

    def task_for(self, collection_prefix: str) -> str | None:
        """The default query task of the collections named ``{collection_prefix}_{dim}``."""
        return self.collection_tasks.get(collection_prefix, self.default_task)


class ApiSettings(_Section):
    """The HTTP API of `python -m pipeline serve` (OpenAI-compatible embeddings, search)."""

    host: str = Field("127.0.0.1", description="Address the API listens on.")
    port: int = Field(8000, ge=0, le=65535, description="Port the API listens on (0: any free port).")
    model_name: str | None = Field(
        None, description="Model id the API reports and accepts in 'model'; default: model.name_or_path."
    )
    max_inputs: int = Field(2048, ge=1, description="Most inputs in one embeddings request (OpenAI's limit).")
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest request body accepted (larger: HTTP 413)."
    )


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
