"""Milvus sink: every document's chunks in one collection per Matryoshka dimension.

Replica ``{prefix}_{dim}`` holds one row per chunk, keyed ``pk = f"{doc_id}#{chunk_index}"``.
:meth:`MilvusSink.write` gives these guarantees for a batch of writes in partition order:

* The result equals applying the writes one by one in order, skipping the rejected ones:
  per document only the last accepted write is sent, an upsert replaces *all* chunks of
  its document (rows ``0..n-1`` upserted, then rows with ``chunk_index >= n`` deleted), a
  delete removes every chunk.  Re-applying the same batch leaves Milvus unchanged, so a
  batch that failed half-way is repaired by retrying it.
* A write Milvus can never accept (NaN vector, text too long, ...) is rejected alone and
  reported in :attr:`WriteResult.rejected` by its position; the rest are written.
* A transient failure (server down, timeout, rate limit) raises
  :class:`~workers.errors.SinkUnavailable`: retry the same batch later.

Collections use Strong consistency: a delete by expression must see every earlier write
(the stale chunks of a previous version), and :meth:`count` / :meth:`fetch_all` read
their own writes.  Searches therefore wait for the server's latest time tick.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.exceptions import DataNotMatchException, MilvusException

from pipeline.config import MilvusSettings
from pipeline.milvus_expr import any_of, in_lists
from workers.errors import ConfigError, PipelineError, PoisonInput, SinkUnavailable

logger = logging.getLogger(__name__)

DOC_ID_MAX_BYTES = 512 * 4  # 512 characters of any Unicode, UTF-8 encoded
PK_MAX_BYTES = DOC_ID_MAX_BYTES + 32  # "#" and the chunk index
TEXT_MAX_BYTES = 65535  # largest VARCHAR
METADATA_MAX_BYTES = 65536  # Milvus' JSON field limit
_MAX_CALL_ROWS = 5000
_MAX_CALL_BYTES = 16 * 1024 * 1024  # well under the 64 MiB gRPC limit of the server
_MAX_EXPR_IDS = 1000
_MAX_EXPR_CHARS = 256 * 1024
_IVF_NLIST = 1024
_IVF_NPROBE = 32
_QUERY_PAGE = 1000
_RETRY_AFTER_S = 1.0
_STRONG = "Strong"
# Server codes (merr) of transient conditions: service unavailable, memory / request /
# disk limit, rate limit, force-deny (quota protection), time-tick delay.
_TRANSIENT_CODES = frozenset({2, 3, 4, 7, 8, 9, 11})
_TRANSIENT_GRPC = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_INVALID_PARAMETER_CODES = frozenset({1100, 1101, 1102})
_COLLECTION_NOT_FOUND = 100
_HIT_FIELDS = frozenset({"text", "metadata"})


@dataclass(frozen=True)
class ChunkRow:
    """One chunk of a document, as stored in every replica."""

    doc_id: str
    chunk_index: int
    text: str
    metadata: dict[str, Any]


@dataclass(frozen=True)
class UpsertDocument:
    """Replace every chunk of ``doc_id``; ``vectors[dim]`` has shape ``(len(chunks), dim)``."""

    doc_id: str
    chunks: Sequence[ChunkRow]
    vectors: Mapping[int, np.ndarray]


@dataclass(frozen=True)
class DeleteDocument:
    """Remove every chunk of ``doc_id``."""

    doc_id: str


DocumentWrite = UpsertDocument | DeleteDocument


@dataclass(frozen=True)
class WriteResult:
    """Outcome of :meth:`MilvusSink.write`.

    Every write not in ``rejected`` has been applied or superseded by a later write.
    """

    rejected: Mapping[int, PoisonInput]  # position in ``writes`` -> why Milvus can never take it
    documents: int  # documents whose final state was written (upserted or deleted)
    rows: int  # chunk rows upserted into each replica


@dataclass(frozen=True)
class Hit:
    """One search result; ``text`` / ``metadata`` are None when not requested."""

    pk: str
    doc_id: str
    chunk_index: int
    text: str | None
    metadata: dict[str, Any] | None
    score: float


@dataclass(frozen=True)
class _Plan:
    """A validated write: the chunks its document keeps (none for a delete)."""

    index: int
    doc_id: str
    texts: tuple[str, ...]
    metadata: tuple[str, ...]  # JSON text exactly as sent
    vectors: Mapping[int, np.ndarray]
    row_bytes: tuple[int, ...]  # estimated payload of each row, vector excluded


class MilvusSink:
    """Writes and reads the dimension replicas; every method is blocking (use a thread)."""

    def __init__(
        self,
        settings: MilvusSettings,
        dims: Sequence[int],
        *,
        max_call_rows: int = _MAX_CALL_ROWS,
        max_call_bytes: int = _MAX_CALL_BYTES,
    ) -> None:
        if not dims or len(set(dims)) != len(dims) or min(dims) < 1:
            raise ConfigError(f"replica dims must be distinct positive integers, got {list(dims)}")
        self._settings = settings
        self._dims = tuple(dims)
        self._max_rows = max_call_rows
        self._max_bytes = max_call_bytes
        self._client_lock = threading.Lock()
        self._milvus: MilvusClient | None = None

    @property
    def dims(self) -> tuple[int, ...]:
        return self._dims

    def collection_name(self, dim: int) -> str:
        return f"{self._settings.collection_prefix}_{dim}"

    # ---------------------------------------------------------------- collections

    def ensure_collections(self) -> None:
        """Create missing replicas (schema, index), check existing ones, and load all.

        Raises ConfigError when an existing collection does not match the schema, metric or
        index type this sink writes.
        """
        names = [self.collection_name(dim) for dim in self._dims]
        for name, dim in zip(names, self._dims, strict=True):
            if not self._call(f"looking up {name}", "has_collection", name):
                self._create(name, dim)
            self._verify_schema(name, dim)
            indexes = self._call(f"listing indexes of {name}", "list_indexes", name, "embedding")
            if indexes:
                self._verify_index(name, indexes[0])
            else:
                self._call(f"indexing {name}", "create_index", name, self._index_params())
            # Start every load before waiting on any: the server loads them side by side.
            self._call(f"loading {name}", "load_collection", name, _async=True)
        for name in names:
            self._call(f"loading {name}", "load_collection", name)

    def _create(self, name: str, dim: int) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=PK_MAX_BYTES)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=DOC_ID_MAX_BYTES)
        schema.add_field("chunk_index", DataType.INT64)
        schema.add_field("text", DataType.VARCHAR, max_length=TEXT_MAX_BYTES)
        schema.add_field("metadata", DataType.JSON)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=dim)
        try:
            self._call(
                f"creating {name}", "create_collection", name, schema=schema, consistency_level=_STRONG
            )
        except PipelineError:
            # Another worker may have created it between our check and our create.
            if not self._call(f"looking up {name}", "has_collection", name):
                raise
            return
        logger.info("created Milvus collection %s (dim %d)", name, dim)

    def _verify_schema(self, name: str, dim: int) -> None:
        info = self._call(f"describing {name}", "describe_collection", name)
        fields = {f["name"]: f for f in info["fields"]}
        expected: dict[str, tuple[DataType, dict[str, int]]] = {
            "pk": (DataType.VARCHAR, {"max_length": PK_MAX_BYTES}),
            "doc_id": (DataType.VARCHAR, {"max_length": DOC_ID_MAX_BYTES}),
            "chunk_index": (DataType.INT64, {}),
            "text": (DataType.VARCHAR, {"max_length": TEXT_MAX_BYTES}),
            "metadata": (DataType.JSON, {}),
            "embedding": (DataType.FLOAT_VECTOR, {"dim": dim}),
        }
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
            raise ConfigError(
                f"Milvus collection {name} does not match the replica schema: {'; '.join(problems)}. "
                f"Drop it or use another milvus.collection_prefix."
            )

    def _verify_index(self, name: str, index_name: str) -> None:
        index = self._call(f"describing the index of {name}", "describe_index", name, index_name)
        wanted = self._settings.index_type
        if index.get("metric_type") != "COSINE" or index.get("index_type") != wanted:
            raise ConfigError(
                f"Milvus collection {name} is indexed with {index.get('index_type')}/"
                f"{index.get('metric_type')}, but milvus.index_type is {wanted}/COSINE. "
                f"Drop the index (it is rebuilt on start) or change milvus.index_type."
            )

    def _index_params(self) -> Any:
        settings = self._settings
        params: dict[str, int] = {}
        if settings.index_type == "HNSW":
            params = {"M": settings.hnsw_m, "efConstruction": settings.hnsw_ef_construction}
        elif settings.index_type == "IVF_FLAT":
            params = {"nlist": _IVF_NLIST}
        index_params = MilvusClient.prepare_index_params()
        index_params.add_index(
            "embedding", index_type=settings.index_type, metric_type="COSINE", params=params
        )
        return index_params

    # ---------------------------------------------------------------------- writes

    def write(self, writes: Sequence[DocumentWrite]) -> WriteResult:
        """Apply ``writes`` (in partition order) to every replica; see the module docstring.

        Raises SinkUnavailable on transient failures (retry the same batch), ConfigError when a
        replica is missing, PipelineError when Milvus fails otherwise.  Concurrent calls must
        not share documents (the consumer writes each partition from one task).
        """
        rejected: dict[int, PoisonInput] = {}
        candidates: dict[str, list[_Plan]] = {}  # valid writes per document, in order
        for index, document_write in enumerate(writes):
            try:
                plan = self._validate(index, document_write)
            except PoisonInput as exc:
                rejected[index] = exc
                continue
            candidates.setdefault(plan.doc_id, []).append(plan)
        applied: set[str] = set()
        rows = 0
        # Each round sends the latest remaining write of each document; a write Milvus
        # refuses drops out and that document's previous write is sent next round.
        while candidates:
            latest = [plans[-1] for plans in candidates.values()]
            refused = self._apply(latest)
            for plan in latest:
                if plan.doc_id in refused:
                    rejected[candidates[plan.doc_id].pop().index] = refused[plan.doc_id]
                else:
                    applied.add(plan.doc_id)
                    rows += len(plan.texts)
            candidates = {d: candidates[d] for d in refused if candidates[d]}
        return WriteResult(rejected=rejected, documents=len(applied), rows=rows)

    def _validate(self, index: int, document_write: DocumentWrite) -> _Plan:
        """The write as a plan, or PoisonInput naming its document when Milvus could never take it."""
        doc_id = document_write.doc_id
        doc_id_bytes = _utf8_len(doc_id, doc_id, "the document id")
        if doc_id_bytes > DOC_ID_MAX_BYTES:
            raise _poison(doc_id, f"the document id is longer than {DOC_ID_MAX_BYTES} UTF-8 bytes")
        if isinstance(document_write, DeleteDocument):
            return _Plan(index, doc_id, (), (), {}, ())
        texts: list[str] = []
        metadata: list[str] = []
        row_bytes: list[int] = []
        for position, chunk in enumerate(document_write.chunks):
            if chunk.doc_id != doc_id or chunk.chunk_index != position:
                raise _poison(
                    doc_id, f"chunk {position} is chunk {chunk.chunk_index} of {_show(chunk.doc_id)}"
                )
            text_bytes = _utf8_len(chunk.text, doc_id, f"the text of chunk {position}")
            if text_bytes > TEXT_MAX_BYTES:
                raise _poison(doc_id, f"chunk {position} has {text_bytes} UTF-8 bytes, over {TEXT_MAX_BYTES}")
            if not isinstance(chunk.metadata, dict):
                raise _poison(doc_id, "metadata must be a JSON object")
            try:
                meta = json.dumps(chunk.metadata, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            except (TypeError, ValueError) as exc:
                raise _poison(doc_id, f"metadata is not valid JSON: {exc}") from exc
            meta_bytes = _utf8_len(meta, doc_id, "the metadata")
            if meta_bytes > METADATA_MAX_BYTES:
                raise _poison(doc_id, f"metadata has {meta_bytes} bytes of JSON, over {METADATA_MAX_BYTES}")
            texts.append(chunk.text)
            metadata.append(meta)
            row_bytes.append(2 * doc_id_bytes + text_bytes + meta_bytes + 64)
        vectors: dict[int, np.ndarray] = {}
        for dim in self._dims if texts else ():  # a document without chunks needs no vectors
            given = document_write.vectors.get(dim)
            if given is None:
                raise _poison(doc_id, f"no {dim}-d vectors")
            with np.errstate(over="ignore"):  # values beyond float32 become inf, rejected below
                array = np.asarray(given, dtype=np.float32)
            if array.shape != (len(texts), dim):
                raise _poison(
                    doc_id, f"{dim}-d vectors have shape {array.shape}, expected {(len(texts), dim)}"
                )
            if not np.isfinite(array).all():
                raise _poison(doc_id, f"{dim}-d vectors contain NaN or infinity")
            if (~array.any(axis=1)).any():
                raise _poison(doc_id, f"a {dim}-d vector is all zeros (no cosine direction)")
            vectors[dim] = array
        return _Plan(index, doc_id, tuple(texts), tuple(metadata), vectors, tuple(row_bytes))

    def _apply(self, plans: Sequence[_Plan]) -> dict[str, PoisonInput]:
        """Write one plan per document to every replica; returns the documents Milvus refused.

        A refused document is left as it was, except that one too large for a single call
        may keep the rows of its calls that went through (its next write repairs it).
        Refusals are only expected in the first replica: the replicas differ only in vector
        width, which was validated.
        """
        refused: dict[str, PoisonInput] = {}
        for replica, dim in enumerate(self._dims):
            name = self.collection_name(dim)
            live = [p for p in plans if p.doc_id not in refused]
            for call_plans, rows in self._upsert_calls([p for p in live if p.texts], dim):
                try:
                    self._call(f"upserting into {name}", "upsert", name, rows, refusable=True)
                except PoisonInput as exc:
                    outcome = (
                        {call_plans[0].doc_id: exc}
                        if len(call_plans) == 1
                        else self._isolate(name, call_plans, dim)
                    )
                    if outcome and replica:
                        raise PipelineError(
                            f"{name} refused documents that {self.collection_name(self._dims[0])} "
                            f"accepted ({', '.join(map(_show, outcome))}): {exc}"
                        ) from exc
                    refused.update({d: _poison(d, str(e)) for d, e in outcome.items()})
            # One delete per replica and write() in the usual case: every document drops
            # its chunks from its new chunk count on (all of them for a delete).
            kept: dict[int, list[str]] = {}
            for plan in live:
                if plan.doc_id not in refused:
                    kept.setdefault(len(plan.texts), []).append(plan.doc_id)
            terms = (
                f"{ids} and chunk_index >= {count}" if count else ids
                for count, doc_ids in sorted(kept.items())
                for ids in in_lists("doc_id", doc_ids, _MAX_EXPR_IDS, _MAX_EXPR_CHARS)
            )
            for expr in any_of(terms, _MAX_EXPR_CHARS):
                self._call(f"deleting from {name}", "delete", name, filter=expr, consistency_level=_STRONG)
        return refused

    def _isolate(self, name: str, plans: Sequence[_Plan], dim: int) -> dict[str, PoisonInput]:
        """Upsert ``plans`` one document at a time; returns the ones Milvus refuses."""
        refused: dict[str, PoisonInput] = {}
        for plan in plans:
            try:
                for _, rows in self._upsert_calls([plan], dim):
                    self._call(f"upserting into {name}", "upsert", name, rows, refusable=True)
            except PoisonInput as exc:
                refused[plan.doc_id] = exc
        return refused

    def _upsert_calls(
        self, plans: Sequence[_Plan], dim: int
    ) -> Iterator[tuple[list[_Plan], list[dict[str, Any]]]]:
        """Rows of ``plans`` cut into calls of at most max rows / bytes, with the plans each touches."""
        call_plans: list[_Plan] = []
        rows: list[dict[str, Any]] = []
        size = 0
        for plan in plans:
            vectors = plan.vectors[dim]
            for i, (text, meta) in enumerate(zip(plan.texts, plan.metadata, strict=True)):
                row_size = plan.row_bytes[i] + 4 * dim
                if rows and (len(rows) >= self._max_rows or size + row_size > self._max_bytes):
                    yield call_plans, rows
                    call_plans, rows, size = [], [], 0
                if not call_plans or call_plans[-1] is not plan:
                    call_plans.append(plan)
                rows.append(
                    {
                        "pk": f"{plan.doc_id}#{i}",
                        "doc_id": plan.doc_id,
                        "chunk_index": i,
                        "text": text,
                        "metadata": meta,  # pymilvus sends a str as ready-made JSON
                        "embedding": vectors[i].tolist(),
                    }
                )
                size += row_size
        if rows:
            yield call_plans, rows

    # ----------------------------------------------------------------------- reads

    def count(self, dim: int) -> int:
        """Exact row count of replica ``dim``; Strong consistency, so every finished write counts."""
        name = self.collection_name(dim)
        result = self._call(
            f"counting {name}",
            "query",
            name,
            filter="",
            output_fields=["count(*)"],
            consistency_level=_STRONG,
        )
        return int(result[0]["count(*)"])

    def search(
        self,
        dim: int,
        vectors: np.ndarray,
        top_k: int,
        output_fields: Collection[str] = ("text", "metadata"),
    ) -> list[list[Hit]]:
        """The ``top_k`` nearest chunks (cosine, best first) of each row of ``vectors`` (q, dim).

        ``output_fields`` picks which of "text" and "metadata" to fetch.
        """
        queries = np.asarray(vectors, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != dim:
            raise ValueError(f"query vectors must have shape (q, {dim}), got {queries.shape}")
        if unknown := set(output_fields) - _HIT_FIELDS:
            raise ValueError(f"output_fields may only hold {sorted(_HIT_FIELDS)}, got {sorted(unknown)}")
        if not len(queries):
            return []
        name = self.collection_name(dim)
        params: dict[str, int] = {}
        if self._settings.index_type == "HNSW":
            params = {"ef": max(self._settings.search_ef, top_k)}
        elif self._settings.index_type == "IVF_FLAT":
            params = {"nprobe": _IVF_NPROBE}
        result = self._call(
            f"searching {name}",
            "search",
            name,
            data=queries.tolist(),
            limit=top_k,
            output_fields=["pk", "doc_id", "chunk_index", *sorted(output_fields)],
            search_params={"metric_type": "COSINE", "params": params},
        )
        return [
            [
                Hit(
                    pk=hit["entity"]["pk"],
                    doc_id=hit["entity"]["doc_id"],
                    chunk_index=int(hit["entity"]["chunk_index"]),
                    text=hit["entity"]["text"] if "text" in output_fields else None,
                    metadata=hit["entity"]["metadata"] if "metadata" in output_fields else None,
                    score=float(hit["distance"]),
                )
                for hit in hits
            ]
            for hits in result
        ]

    def fetch_all(self, dim: int) -> list[dict[str, Any]]:
        """Every row of replica ``dim`` with its vector (a list of floats), sorted by pk.

        Strong consistency; holds the whole replica in memory, so meant for checks and tools.
        """
        name = self.collection_name(dim)
        fields = ["pk", "doc_id", "chunk_index", "text", "metadata", "embedding"]
        rows: list[dict[str, Any]] = []
        with self._translated(f"reading {name}"):
            pages = self._client().query_iterator(
                name,
                batch_size=_QUERY_PAGE,
                output_fields=fields,
                consistency_level=_STRONG,
                timeout=self._settings.timeout_s,
            )
            try:
                while page := pages.next():
                    rows.extend(page)
            finally:
                pages.close()
        return sorted(
            (
                {
                    "pk": row["pk"],
                    "doc_id": row["doc_id"],
                    "chunk_index": int(row["chunk_index"]),
                    "text": row["text"],
                    "metadata": row["metadata"],
                    "embedding": [float(x) for x in row["embedding"]],
                }
                for row in rows
            ),
            key=lambda row: row["pk"],
        )

    def flush(self) -> None:
        """Seal the replicas' growing segments; milvus-lite searches a fresh burst faster after it."""
        for dim in self._dims:
            name = self.collection_name(dim)
            self._call(f"flushing {name}", "flush", name)

    def close(self) -> None:
        """Drop the connection; a later call reconnects."""
        with self._client_lock:
            client, self._milvus = self._milvus, None
        if client is not None:
            client.close()

    # ------------------------------------------------------------------ plumbing

    def _client(self) -> MilvusClient:
        with self._client_lock:
            if self._milvus is None:
                token = self._settings.token
                self._milvus = MilvusClient(
                    uri=self._settings.uri,
                    token=token.get_secret_value() if token else "",
                    db_name=self._settings.db_name,
                    timeout=self._settings.timeout_s,
                    dedicated=True,  # close() must really close it, not a shared channel
                )
            return self._milvus

    def _call(self, what: str, method: str, *args: Any, refusable: bool = False, **kwargs: Any) -> Any:
        """``client.<method>(*args, **kwargs)`` with the call timeout and typed errors."""
        with self._translated(what, refusable=refusable):
            return getattr(self._client(), method)(*args, timeout=self._settings.timeout_s, **kwargs)

    @contextmanager
    def _translated(self, what: str, *, refusable: bool = False) -> Iterator[None]:
        try:
            yield
        except (MilvusException, grpc.RpcError, grpc.FutureTimeoutError) as exc:
            raise _translate(exc, what, refusable) from exc


def _translate(exc: Exception, what: str, refusable: bool) -> PipelineError:
    """The project error for a pymilvus / gRPC failure.

    ``refusable``: the call carried rows, so an invalid-parameter answer means Milvus
    refuses that data (PoisonInput) rather than a bug in the request.
    """
    if isinstance(exc, MilvusException):
        detail = f"{exc.message} (code {exc.code})"
    elif isinstance(exc, grpc.RpcError) and isinstance(exc, grpc.Call):
        detail = f"{exc.code().name}: {exc.details()}"
    else:
        detail = f"{type(exc).__name__}: {exc}"
    if _is_transient(exc):
        return SinkUnavailable(f"Milvus unavailable while {what}: {detail}", retry_after=_RETRY_AFTER_S)
    if isinstance(exc, MilvusException):
        if refusable and (
            exc.code in _INVALID_PARAMETER_CODES
            or exc.is_input_error
            or isinstance(exc, DataNotMatchException)
        ):
            return PoisonInput(f"Milvus refused {what}: {detail}")
        if exc.code == _COLLECTION_NOT_FOUND:
            return ConfigError(f"Milvus collection missing while {what}: {detail}; run ensure_collections()")
    return PipelineError(f"Milvus failed while {what}: {detail}")


def _is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` or one of its causes says the server is down, slow or throttling."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # pymilvus raises `e from e`
        seen.add(id(current))
        if isinstance(current, grpc.FutureTimeoutError):
            return True
        if isinstance(current, MilvusException):
            code = current.code
            if current.retriable or code in _TRANSIENT_CODES or code in _TRANSIENT_GRPC:
                return True
        elif isinstance(current, grpc.Call) and current.code() in _TRANSIENT_GRPC:
            return True
        current = current.__cause__
    return False


def _utf8_len(value: object, doc_id: str, what: str) -> int:
    if not isinstance(value, str):
        raise _poison(doc_id, f"{what} is a {type(value).__name__}, not a string")
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise _poison(doc_id, f"{what} is not valid Unicode (lone surrogate)") from exc


def _poison(doc_id: str, reason: str) -> PoisonInput:
    return PoisonInput(f"document {_show(doc_id)}: {reason}")


def _show(doc_id: object) -> str:
    text = repr(doc_id)
    return text if len(text) <= 120 else f"{text[:117]}..."
