"""Document writes checked against Milvus' limits, then cut into upsert calls and deletes.

:func:`plan_write` is the sink's poison check: before anything is sent, it rejects a
write that breaks a limit of the replica schema or of Milvus (ids and texts longer than
their VARCHAR, metadata that is not a JSON object within Milvus' JSON limit, vectors of
the wrong shape, non-finite or all zeros; with tenants, metadata without a usable tenant).
Accepted writes become the rows of
:func:`upsert_calls`, in calls small enough for one request, and the delete filters of
:func:`stale_chunk_filters` for the documents that :func:`first_stale_pks` finds stale chunks of.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.documents import ChunkRow, SourcePosition
from pipeline.milvus.errors import poison, show
from pipeline.milvus.expr import any_of, in_lists
from pipeline.milvus.schema import DOC_ID_MAX_BYTES, TEXT_MAX_BYTES
from pipeline.milvus.tenants import TENANT_FIELD, tenant_of

METADATA_MAX_BYTES = 65536  # Milvus' JSON field limit
_MAX_EXPR_IDS = 1000
_MAX_EXPR_CHARS = 256 * 1024
UNKNOWN_POSITION = -1
"""``src_partition`` / ``src_offset`` of a row whose write came without a source (a tool's)."""


@dataclass(frozen=True)
class Plan:
    """A validated write: the chunks its document keeps (none for a delete)."""

    index: int  # position of the write in its batch
    doc_id: str
    texts: tuple[str, ...]
    metadata: tuple[str, ...]  # JSON text exactly as sent
    vectors: Mapping[int, np.ndarray]  # dim -> float32 (len(texts), dim); empty without texts
    row_bytes: tuple[int, ...]  # estimated payload of each row, vector excluded
    source: SourcePosition | None = None  # the event it was made from, stored on every row
    tenant: str | None = None  # with tenants (milvus.tenant_field): every row's; None for a delete


def plan_write(
    index: int,
    doc_id: str,
    chunks: Sequence[ChunkRow],
    vectors: Mapping[int, np.ndarray],
    dims: Sequence[int],
    source: SourcePosition | None = None,
    tenant_field: str | None = None,
) -> Plan:
    """The write that leaves ``doc_id`` with exactly ``chunks`` (none: a delete) as a plan; with
    ``tenant_field`` (``milvus.tenant_field``) its rows carry the tenant of their metadata.

    Raises PoisonInput naming the document when Milvus could never take the write, or when, with
    ``tenant_field``, a chunk's metadata has no usable tenant or the chunks' tenants differ.
    """
    doc_id_bytes = _utf8_len(doc_id, doc_id, "the document id")
    if doc_id_bytes > DOC_ID_MAX_BYTES:
        raise poison(doc_id, f"the document id is longer than {DOC_ID_MAX_BYTES} UTF-8 bytes")
    texts: list[str] = []
    metadata: list[str] = []
    row_bytes: list[int] = []
    tenants: set[str] = set()
    for position, chunk in enumerate(chunks):
        if chunk.doc_id != doc_id or chunk.chunk_index != position:
            raise poison(doc_id, f"chunk {position} is chunk {chunk.chunk_index} of {show(chunk.doc_id)}")
        text_bytes = _utf8_len(chunk.text, doc_id, f"the text of chunk {position}")
        if text_bytes > TEXT_MAX_BYTES:
            raise poison(doc_id, f"chunk {position} has {text_bytes} UTF-8 bytes, over {TEXT_MAX_BYTES}")
        if not isinstance(chunk.metadata, dict):
            raise poison(doc_id, "metadata must be a JSON object")
        if tenant_field is not None:
            try:
                tenants.add(tenant_of(chunk.metadata, tenant_field))
            except ValueError as exc:
                raise poison(doc_id, str(exc)) from exc
        try:
            meta = json.dumps(chunk.metadata, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            raise poison(doc_id, f"metadata is not valid JSON: {exc}") from exc
        meta_bytes = _utf8_len(meta, doc_id, "the metadata")
        if meta_bytes > METADATA_MAX_BYTES:
            raise poison(doc_id, f"metadata has {meta_bytes} bytes of JSON, over {METADATA_MAX_BYTES}")
        texts.append(chunk.text)
        metadata.append(meta)
        row_bytes.append(2 * doc_id_bytes + text_bytes + meta_bytes + 64)
    arrays: dict[int, np.ndarray] = {}
    for dim in dims if texts else ():  # a document without chunks needs no vectors
        given = vectors.get(dim)
        if given is None:
            raise poison(doc_id, f"no {dim}-d vectors")
        with np.errstate(over="ignore"):  # values beyond float32 become inf, rejected below
            array = np.asarray(given, dtype=np.float32)
        if array.shape != (len(texts), dim):
            raise poison(doc_id, f"{dim}-d vectors have shape {array.shape}, expected {(len(texts), dim)}")
        if not np.isfinite(array).all():
            raise poison(doc_id, f"{dim}-d vectors contain NaN or infinity")
        if (~array.any(axis=1)).any():
            raise poison(doc_id, f"a {dim}-d vector is all zeros (no cosine direction)")
        arrays[dim] = array
    if len(tenants) > 1:
        raise poison(doc_id, f"its chunks name {len(tenants)} tenants; a document has one")
    tenant = tenants.pop() if tenants else None
    return Plan(index, doc_id, tuple(texts), tuple(metadata), arrays, tuple(row_bytes), source, tenant)


def upsert_calls(
    plans: Sequence[Plan], dim: int, max_rows: int, max_bytes: int
) -> Iterator[tuple[list[Plan], list[dict[str, Any]]]]:
    """The replica-``dim`` rows of ``plans``, in order, cut into calls of at most ``max_rows``
    rows and about ``max_bytes`` (a larger row goes alone), each with the plans it touches.  A plan
    with a tenant gives its rows the ``tenant`` field."""
    call_plans: list[Plan] = []
    rows: list[dict[str, Any]] = []
    size = 0
    for plan in plans:
        vectors = plan.vectors[dim]
        source = plan.source or SourcePosition(UNKNOWN_POSITION, UNKNOWN_POSITION)
        for i, (text, meta) in enumerate(zip(plan.texts, plan.metadata, strict=True)):
            row_size = plan.row_bytes[i] + 4 * dim
            if rows and (len(rows) >= max_rows or size + row_size > max_bytes):
                yield call_plans, rows
                call_plans, rows, size = [], [], 0
            if not call_plans or call_plans[-1] is not plan:
                call_plans.append(plan)
            row: dict[str, Any] = {
                "pk": chunk_pk(plan.doc_id, i),
                "doc_id": plan.doc_id,
                "chunk_index": i,
                "text": text,
                "metadata": meta,  # pymilvus sends a str as ready-made JSON
                "embedding": vectors[i].tolist(),
                "src_partition": source.partition,
                "src_offset": source.offset,
            }
            if plan.tenant is not None:
                row[TENANT_FIELD] = plan.tenant
            rows.append(row)
            size += row_size
    if rows:
        yield call_plans, rows


def chunk_pk(doc_id: str, chunk_index: int) -> str:
    """Primary key of chunk ``chunk_index`` of ``doc_id``."""
    return f"{doc_id}#{chunk_index}"


def first_stale_pks(plans: Sequence[Plan]) -> dict[str, Plan]:
    """``{pk of chunk n: plan}`` for each plan that leaves its document ``n`` chunks.

    A document's chunks are always numbered ``0..m-1`` without gaps (every write upserts its
    chunks before it deletes the ones past them, and a retry repeats both), so the document has
    stale chunks exactly when the row keyed by this pk exists.
    """
    return {chunk_pk(plan.doc_id, len(plan.texts)): plan for plan in plans}


def pk_filters(pks: Iterable[str]) -> Iterator[str]:
    """``pk in [...]`` filters covering ``pks``, each within Milvus' expression limits."""
    return in_lists("pk", pks, _MAX_EXPR_IDS, _MAX_EXPR_CHARS)


def stale_chunk_filters(plans: Sequence[Plan]) -> Iterator[str]:
    """Delete filters that together match every chunk of ``plans``' documents from their
    new chunk count on (all chunks of a delete); each at most about 256K characters long,
    so a usual batch needs one."""
    doc_ids_by_count: dict[int, list[str]] = {}
    for plan in plans:
        doc_ids_by_count.setdefault(len(plan.texts), []).append(plan.doc_id)
    terms = (
        f"{ids} and chunk_index >= {count}" if count else ids
        for count, doc_ids in sorted(doc_ids_by_count.items())
        for ids in in_lists("doc_id", doc_ids, _MAX_EXPR_IDS, _MAX_EXPR_CHARS)
    )
    return any_of(terms, _MAX_EXPR_CHARS)


def _utf8_len(value: object, doc_id: str, what: str) -> int:
    if not isinstance(value, str):
        raise poison(doc_id, f"{what} is a {type(value).__name__}, not a string")
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise poison(doc_id, f"{what} is not valid Unicode (lone surrogate)") from exc
