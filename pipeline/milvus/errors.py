"""The sink's errors: pymilvus / gRPC failures as project errors, and refused documents.

:func:`translated` turns every pymilvus / gRPC exception of a call into exactly one of

* :class:`SinkUnavailable` when the server is down, slow or throttling (retry the same call
  later), or its :class:`CollectionNotLoaded` when a collection is released (a restarted server,
  or an operator's ``release_collection``): load it and retry,
* :class:`~workers.errors.PoisonInput` when a call that carried rows was refused for
  its data,
* :class:`~workers.errors.ConfigError` when a replica collection is missing,
* :class:`~workers.errors.PipelineError` otherwise;

each raised ``from`` the original exception.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from pymilvus.exceptions import DataNotMatchException, MilvusException

from workers.errors import ConfigError, PipelineError, PoisonInput, RetriableError

_RETRY_AFTER_S = 1.0


class SinkUnavailable(RetriableError):
    """Milvus could not be reached, timed out or throttled: retry the same call later."""


class CollectionNotLoaded(SinkUnavailable):
    """A replica collection is released: load it (``MilvusSink.ensure_collections``), then retry."""


# Server codes (merr) of transient conditions: service unavailable, memory / request /
# disk limit, rate limit, force-deny (quota protection), time-tick delay.
_TRANSIENT_CODES = frozenset({2, 3, 4, 7, 8, 9, 11})
_TRANSIENT_GRPC = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED})
_INVALID_PARAMETER_CODES = frozenset({1100, 1101, 1102})
_COLLECTION_NOT_FOUND = 100
# A restarted server (Milvus Lite among them) brings its collections back released; the sink
# loads them again and retries (MilvusSink._on_loaded_replicas), so this is transient.
_COLLECTION_NOT_LOADED = 101


@contextmanager
def translated(what: str, *, refusable: bool = False) -> Iterator[None]:
    """Re-raise pymilvus / gRPC failures of the block as :func:`translate` says.

    ``what`` names the call in the messages, e.g. "upserting into documents_384".
    """
    try:
        yield
    except (MilvusException, grpc.RpcError, grpc.FutureTimeoutError) as exc:
        raise translate(exc, what, refusable) from exc


def translate(exc: Exception, what: str, refusable: bool) -> PipelineError:
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
    if isinstance(exc, MilvusException) and exc.code == _COLLECTION_NOT_LOADED:
        return CollectionNotLoaded(f"Milvus collection not loaded while {what}: {detail}", retry_after=0.0)
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


def poison(doc_id: str, reason: str) -> PoisonInput:
    """PoisonInput for document ``doc_id``, named in the message (shortened if long)."""
    return PoisonInput(f"document {show(doc_id)}: {reason}")


def show(doc_id: object) -> str:
    """``repr(doc_id)``, cut to at most 120 characters for messages."""
    text = repr(doc_id)
    return text if len(text) <= 120 else f"{text[:117]}..."
