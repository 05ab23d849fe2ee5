"""Settings of the write side: Milvus and the dimension replicas."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, PositiveInt, SecretStr

from pipeline.settings.base import Section, read_secret
from workers.model.matryoshka import validate_dims


class MilvusSettings(Section):
    """Where the dimension replicas live and how they are indexed."""

    _ordered = (("ivf_nprobe", "ivf_nlist", False),)
    _secret_files = (("token", "token_file"),)
    uri: str = Field(
        "http://127.0.0.1:19530", description="Milvus URI (http://host:port, or a local .db path)."
    )
    token: SecretStr | None = Field(None, description="Milvus token or 'user:password' (never logged).")
    token_file: Path | None = Field(
        None,
        description="File holding the Milvus token instead of token, read by each process that "
        "connects (consumer actors read it on their own node).",
    )
    db_name: str = Field("", description="Milvus database; empty means the server's default.")
    collection_prefix: str = Field(
        "documents",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Replica collections are '{prefix}_{dim}'.",
    )
    tenant_field: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$",
        description="Metadata key naming each document's tenant (unset: no tenants). With it, every "
        "replica gets a 'tenant' partition-key field filled from that key, an event without a non-empty "
        "string there is dead-lettered (missing_tenant), and every search must name one tenant and sees "
        "only its rows. Fixed for the life of the collections: changing it means a new collection_prefix.",
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
    load_timeout_s: float = Field(
        600.0,
        gt=0,
        description="How long start-up waits for the replicas to finish loading (a large collection "
        "takes minutes to load on a real server); each poll of the load state is one call bounded by "
        "timeout_s. A reload while writing waits only timeout_s and is retried.",
    )

    def token_secret(self) -> str | None:
        """The Milvus token, from ``token`` or ``token_file``."""
        return read_secret(self.token, self.token_file, "milvus.token_file")


def _widest_first(dims: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(sorted(set(dims), reverse=True))


class ReplicaSettings(Section):
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
