"""The replica collections: their schema and vector index, created or checked, then loaded.

Replica ``{prefix}_{dim}`` has the fields ``pk`` (VARCHAR primary key, no auto id),
``doc_id``, ``chunk_index``, ``text``, ``metadata`` (JSON), ``embedding``
(FLOAT_VECTOR of ``dim``) and the source position of the write (``src_partition``,
``src_offset``: see :mod:`pipeline.milvus.positions`), Strong consistency, and one COSINE index of
``milvus.index_type`` on ``embedding``.  With ``milvus.tenant_field`` set it also has ``tenant``
(VARCHAR, Milvus' partition key; see :mod:`pipeline.milvus.tenants`) and records the metadata key that
fills it in the collection property ``embedstream.tenant_field``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from pymilvus import CollectionSchema, DataType, MilvusClient
from pymilvus.milvus_client import IndexParams

from pipeline.milvus.connection import MilvusConnection
from pipeline.milvus.loading import load_collections
from pipeline.milvus.tenants import TENANT_FIELD, TENANT_MAX_BYTES, TENANT_PROPERTY
from pipeline.settings import MilvusSettings
from workers.errors import ConfigError, PipelineError

logger = logging.getLogger(__name__)

DOC_ID_MAX_BYTES = 512 * 4  # 512 characters of any Unicode, UTF-8 encoded
PK_MAX_BYTES = DOC_ID_MAX_BYTES + 32  # "#" and the chunk index
TEXT_MAX_BYTES = 65535  # largest VARCHAR
CONSISTENCY = "Strong"  # a delete by expression must see every earlier write
_METRIC = "COSINE"


def ensure_replicas(
    connection: MilvusConnection,
    settings: MilvusSettings,
    names: Mapping[int, str],
    *,
    properties: Mapping[str, str] | None = None,
    wait_s: float | None = None,
) -> None:
    """Create the missing replicas (``names``: dim -> collection) and their index, check
    the existing ones, and load all (:func:`~pipeline.milvus.loading.load_collections`, waiting at
    most ``wait_s``, by default ``settings.load_timeout_s``).

    ``properties``: collection properties set on the replicas this call creates (existing ones
    keep theirs); a tool marks the collections it owns this way (see :func:`collection_properties`).
    Raises ConfigError when an existing collection does not match the schema (tenants included),
    metric or index type of ``settings``, before anything is written.
    """
    tenant = settings.tenant_field
    marks = {**(properties or {}), **({TENANT_PROPERTY: tenant} if tenant else {})}
    for dim, name in names.items():
        if not connection.call(f"looking up {name}", "has_collection", name):
            _create(connection, name, dim, marks, tenant)
        check_schema(name, dim, connection.call(f"describing {name}", "describe_collection", name), tenant)
        indexes = connection.call(f"listing indexes of {name}", "list_indexes", name, "embedding")
        if indexes:
            index = connection.call(f"describing the index of {name}", "describe_index", name, indexes[0])
            check_index(name, index, settings)
        else:
            connection.call(f"indexing {name}", "create_index", name, index_params(settings))
    load_collections(connection, names.values(), settings.load_timeout_s if wait_s is None else wait_s)


def count_rows(connection: MilvusConnection, name: str) -> int:
    """Exact row count of collection ``name`` (``count(*)``, Strong consistency: every finished
    write counts).  The collection must be loaded: Milvus refuses a released one."""
    result = connection.call(
        f"counting {name}",
        "query",
        name,
        filter="",
        output_fields=["count(*)"],
        consistency_level=CONSISTENCY,
    )
    return int(result[0]["count(*)"])


def collection_properties(connection: MilvusConnection, name: str) -> dict[str, str]:
    """The properties of collection ``name`` (those :func:`ensure_replicas` set when it created it)."""
    info = connection.call(f"describing {name}", "describe_collection", name)
    return {str(key): str(value) for key, value in (info.get("properties") or {}).items()}


def _create(
    connection: MilvusConnection, name: str, dim: int, properties: Mapping[str, str], tenant: str | None
) -> None:
    # Without properties the call stays what it always was (older servers may not take any).
    marked: dict[str, Any] = {"properties": dict(properties)} if properties else {}
    try:
        connection.call(
            f"creating {name}",
            "create_collection",
            name,
            schema=replica_schema(dim, tenant),
            consistency_level=CONSISTENCY,
            **marked,
        )
    except PipelineError:
        # Another consumer may have created it between our check and our create.
        if not connection.call(f"looking up {name}", "has_collection", name):
            raise
        return
    logger.info("created Milvus collection %s (dim %d)", name, dim)


def _fields(dim: int, tenant: str | None = None) -> dict[str, tuple[DataType, dict[str, int]]]:
    """Type and type parameters of every field of replica ``dim`` (with tenants: ``tenant`` set), in
    schema order."""
    fields = {
        "pk": (DataType.VARCHAR, {"max_length": PK_MAX_BYTES}),
        "doc_id": (DataType.VARCHAR, {"max_length": DOC_ID_MAX_BYTES}),
        "chunk_index": (DataType.INT64, {}),
        "text": (DataType.VARCHAR, {"max_length": TEXT_MAX_BYTES}),
        "metadata": (DataType.JSON, {}),
        "embedding": (DataType.FLOAT_VECTOR, {"dim": dim}),
        # The Kafka partition and offset of the event the row was written from (-1: unknown).
        "src_partition": (DataType.INT64, {}),
        "src_offset": (DataType.INT64, {}),
    }
    if tenant:
        fields[TENANT_FIELD] = (DataType.VARCHAR, {"max_length": TENANT_MAX_BYTES})
    return fields


def replica_schema(dim: int, tenant: str | None = None) -> CollectionSchema:
    """The schema of replica ``dim``: primary key ``pk``, no auto id, no dynamic fields; with ``tenant``
    (the metadata key, ``milvus.tenant_field``) a ``tenant`` field that is the partition key."""
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    for name, (dtype, params) in _fields(dim, tenant).items():
        keyed = {"is_partition_key": True} if name == TENANT_FIELD else {}
        schema.add_field(name, dtype, is_primary=name == "pk", **keyed, **params)
    return schema


def check_schema(name: str, dim: int, info: Mapping[str, Any], tenant: str | None = None) -> None:
    """Raise ConfigError unless collection ``name`` (``describe_collection`` output ``info``)
    can hold replica ``dim``: the same fields and types, VARCHARs at least as long, and tenants as
    ``tenant`` (``milvus.tenant_field``) says: none, or a ``tenant`` partition key filled from that key."""
    check_tenancy(name, info, tenant)
    fields = {f["name"]: f for f in info["fields"]}
    expected = _fields(dim, tenant)
    problems = [f"unexpected field {n!r}" for n in fields.keys() - expected.keys()]
    for field_name, (dtype, params) in expected.items():
        field = fields.get(field_name)
        if field is None:
            problems.append(f"missing field {field_name!r}")
            continue
        if field["type"] != dtype:
            problems.append(f"{field_name!r} is {field['type'].name}, expected {dtype.name}")
        for key, value in params.items():
            actual = int(field["params"].get(key, -1))
            # A longer VARCHAR accepts everything we write; a vector dim must match.
            if actual != value if key == "dim" else actual < value:
                problems.append(f"{field_name!r} has {key}={actual}, expected {value}")
    if not fields.get("pk", {}).get("is_primary") or info.get("auto_id"):
        problems.append("'pk' must be the primary key, without auto_id")
    if problems:
        hint = "Drop it or use another milvus.collection_prefix."
        if {"missing field 'src_partition'", "missing field 'src_offset'"} >= set(problems):
            # Collections of a version before fencing: their rows cannot say how new they are.
            hint = (
                "It was made before rows carried their source position (src_partition, src_offset), "
                "without which a stale write cannot be told from a new one: use a new "
                "milvus.collection_prefix and re-ingest the topic into it (a new kafka.group_id with "
                "kafka.auto_offset_reset = 'earliest'), then drop the old collections."
            )
        raise ConfigError(
            f"Milvus collection {name} does not match the replica schema: {'; '.join(problems)}. {hint}"
        )


def check_tenancy(name: str, info: Mapping[str, Any], tenant: str | None) -> None:
    """Raise ConfigError, saying what to do, when collection ``name`` was made with other tenants than
    ``tenant`` asks for: with tenants and now without, without and now with, or from another key."""
    field = next((f for f in info["fields"] if f["name"] == TENANT_FIELD), None)
    recorded = (info.get("properties") or {}).get(TENANT_PROPERTY)
    made_with = recorded if field is not None else None
    fresh = (
        "re-ingest into collections made for it (a new milvus.collection_prefix, a new kafka.group_id "
        "with kafka.auto_offset_reset = 'earliest'; or `run --into-version N`), then drop these"
    )
    if field is not None and (not field.get("is_partition_key") or recorded is None):
        problem = (
            f"its {TENANT_FIELD!r} field is not this project's (not the partition key, or no record of the "
            f"metadata key that fills it). Drop it or use another milvus.collection_prefix"
        )
    elif tenant and field is None:
        problem = (
            f"it was made without tenants, but milvus.tenant_field is {tenant!r}: its rows carry no "
            f"tenant to confine searches by. Unset milvus.tenant_field to use it as it is, or {fresh}"
        )
    elif not tenant and field is not None:
        problem = (
            f"it was made with tenants (metadata key {made_with!r}), but milvus.tenant_field is unset, "
            f"which would let every search see every tenant. Set milvus.tenant_field = {made_with!r}"
        )
    elif tenant and made_with != tenant:
        problem = (
            f"its tenants come from metadata key {made_with!r}, but milvus.tenant_field is {tenant!r}. "
            f"Set it back to {made_with!r}, or {fresh}"
        )
    else:
        return
    raise ConfigError(f"Milvus collection {name} does not match the tenant settings: {problem}.")


def index_params(settings: MilvusSettings) -> IndexParams:
    """The COSINE ``settings.index_type`` index to build on ``embedding``."""
    params: dict[str, int] = {}
    if settings.index_type == "HNSW":
        params = {"M": settings.hnsw_m, "efConstruction": settings.hnsw_ef_construction}
    elif settings.index_type == "IVF_FLAT":
        params = {"nlist": settings.ivf_nlist}
    index = MilvusClient.prepare_index_params()
    index.add_index("embedding", index_type=settings.index_type, metric_type=_METRIC, params=params)
    return index


def check_index(name: str, index: Mapping[str, Any], settings: MilvusSettings) -> None:
    """Raise ConfigError unless the index of ``name`` (``describe_index`` output ``index``)
    is a COSINE index of ``settings.index_type``; its build parameters may differ."""
    wanted = settings.index_type
    if index.get("metric_type") != _METRIC or index.get("index_type") != wanted:
        raise ConfigError(
            f"Milvus collection {name} is indexed with {index.get('index_type')}/"
            f"{index.get('metric_type')}, but milvus.index_type is {wanted}/{_METRIC}. "
            f"Drop the index (it is rebuilt on start) or change milvus.index_type."
        )


def search_params(settings: MilvusSettings, top_k: int) -> dict[str, Any]:
    """``search_params`` for a ``top_k`` search of the index that ``settings`` builds."""
    params: dict[str, int] = {}
    if settings.index_type == "HNSW":
        # Milvus refuses an HNSW search with ef below top_k.
        params = {"ef": max(settings.search_ef, top_k)}
    elif settings.index_type == "IVF_FLAT":
        params = {"nprobe": settings.ivf_nprobe}
    return {"metric_type": _METRIC, "params": params}
