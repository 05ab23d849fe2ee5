"""The HTTP API of `python -m pipeline serve`: OpenAI-compatible embeddings, and search.

* ``POST /v1/embeddings`` — the OpenAI schema, so that OpenAI clients (and those of vLLM / SGLang
  deployments) switch by changing the base URL: ``input`` (a string or a list of strings), ``model``,
  ``dimensions`` (Matryoshka cut + L2-normalize, the same function as the replicas), ``encoding_format``
  (``float``, or ``base64`` of little-endian float32), ``usage`` with the token counts.  Texts are embedded
  as given — the caller adds any instruction, as with vLLM — on the pool's query lane.  Token-id inputs
  are refused with a 400 (this server embeds text).  ``model`` picks a LoRA adapter of
  ``model.adapters`` as ``<model>:<adapter>`` (or the adapter's name, as vLLM does;
  :mod:`pipeline.search.model_ids`); an adapter that is not loaded is a 400 ``adapter_not_found``.
* ``POST /v1/search`` — ``{"query": str | [str], "top_k", "dim", "funnel_factor", "recall_target",
  "latency_budget_ms", "task", "per_document", "filter"}``: :func:`pipeline.search.replicas.search`,
  routed as it routes; ``filter`` is a :mod:`pipeline.milvus.filters` object (a bad one is a 400).
  With tenants (``milvus.tenant_field``) each search is confined to one tenant: ``tenant`` in the body,
  else the API key's bound tenant; neither is a 400 ``tenant_required``.  Queries are embedded with the
  LoRA adapter the replicas record.  Each result names its ``strategy`` and, when a recall target or
  latency budget picked it, ``routing``:
  why (e.g. that no profile was measured, so the native replica answered); else null.
* ``POST /v1/rerank`` — TEI / Jina / Cohere's rerank schema, when a reranker is configured
  (:mod:`pipeline.search.rerank_api`).
* ``GET /v1/models``, ``GET /health``.

With ``api.keys`` (or ``api.keys_file``) set, every ``/v1`` route needs ``Authorization: Bearer KEY``
(401 ``invalid_api_key`` without a valid one; 403 when a tenant-bound key's body names another
``tenant``); ``/health`` stays open.  See :mod:`pipeline.search.auth`.

Errors have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for bad input (a
search asking Milvus for more hits than its limit of 16,384 per query, and an input the model fails on
even alone, ``input_not_embeddable``, among them), 404
for an unknown model, 413 for a body over ``api.max_body_bytes``, 429 (with Retry-After) when every
embedder actor's queue stayed full for ``pool.query_backpressure_s``, 503 (with Retry-After) when the
pool or Milvus is unavailable or the request ran past ``api.request_timeout_s``.  No request hangs: a
request past its deadline, or whose client went away, is cancelled, down to its tasks on the embedder
actors.  Built on aiohttp, which ray[default] already installs: no new dependency.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, Protocol

import numpy as np
from aiohttp import web

from pipeline.milvus.filters import FilterError
from pipeline.milvus.sink import MilvusSink
from pipeline.milvus.tenants import TenantRequired
from pipeline.search.api_errors import ApiError, json_body
from pipeline.search.auth import TENANT, ApiKeys, require_key
from pipeline.search.model_ids import UnknownModel, model_ids, requested_adapter
from pipeline.search.replicas import load_profile, search
from pipeline.search.rerank import Reranker
from pipeline.search.routing import Profile
from pipeline.settings import Settings
from workers.adapter_view import AdaptablePool, with_adapter
from workers.errors import (
    Backpressure,
    ConfigError,
    InputTooLong,
    PoisonTexts,
    RetriableError,
    UnknownAdapter,
)

log = logging.getLogger(__name__)

_ENCODINGS = ("float", "base64")
DEFAULT_TOP_K = 10
"""Hits per query of a /v1/search request without ``top_k``."""


class TokenCounter(Protocol):
    def encode(self, texts: list[str]) -> list[list[int]]: ...


def parse_inputs(raw: object, max_inputs: int) -> list[str]:
    """OpenAI's ``input``: a string or a non-empty list of non-empty strings; token ids are refused."""
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'input' must be a string or a non-empty list of strings", "input")
    if any(isinstance(x, int | list) for x in raw):
        raise ApiError(400, "token-id inputs are not supported: send the text", "input", "unsupported_input")
    if not all(isinstance(x, str) for x in raw):
        raise ApiError(400, "'input' must be a string or a list of strings", "input")
    if any(not x for x in raw):
        raise ApiError(400, "'input' must not contain empty strings", "input")
    if len(raw) > max_inputs:
        raise ApiError(400, f"'input' holds {len(raw)} texts; at most {max_inputs} are allowed", "input")
    return raw


def encode_vector(vector: np.ndarray, encoding: str) -> list[float] | str:
    """A row as OpenAI sends it: a list of floats, or base64 of its little-endian float32 bytes."""
    if encoding == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


def _int(body: dict[str, Any], key: str, low: int, high: int) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ApiError(400, f"'{key}' must be an integer in {low}..{high}", key)
    return value


def _float(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise ApiError(400, f"'{key}' must be a number", key)
    return None if value is None else float(value)


class Api:
    """The request handlers over one pool, one tokenizer (for usage counts) and one Milvus sink."""

    def __init__(
        self,
        settings: Settings,
        pool: AdaptablePool,
        tokenizer: TokenCounter,
        sink: MilvusSink,
        profile: Profile | None = None,
        *,
        follow: Callable[[], Awaitable[MilvusSink]] | None = None,
        keys: ApiKeys | None = None,
        adapter: str | None = None,
        reranker: Reranker | None = None,
    ) -> None:
        """``sink`` holds the replicas searched (its dims were resolved when the server was assembled);
        with ``follow``, each search reads the replicas it returns instead (the serving version, which
        `versions switch` moves; a ConfigError from it is answered 503).  ``keys``: who may ask
        (default: read from ``settings.api``; none configured, anyone).  ``adapter``: the LoRA adapter
        searches embed their queries with (the one the replicas record).  ``reranker``: the actors of
        ``settings.reranker`` that ``/v1/rerank`` scores on (:mod:`pipeline.search.rerank_api`)."""
        self._settings = settings
        self._pool = pool
        self._queries = with_adapter(pool, adapter)
        self._tokenizer = tokenizer
        self._sink = sink
        self._follow = follow
        self._model = settings.api.model_name or pool.info.name
        self._profile = profile if profile is not None else load_profile(settings, sink.dims)
        self._created = int(time.time())  # when this server started serving the model
        self._keys = keys if keys is not None else ApiKeys.from_settings(settings.api)
        from pipeline.search.rerank_api import RerankHandler  # it builds on this module

        self._rerank = RerankHandler(reranker, settings.reranker)

    def app(self) -> web.Application:
        # Keys are checked inside the deadline: a tenant-bound key's body is read within it.
        middlewares = [_errors, _deadline(self._settings.api.request_timeout_s), require_key(self._keys)]
        app = web.Application(client_max_size=self._settings.api.max_body_bytes, middlewares=middlewares)
        app.router.add_post("/v1/embeddings", self.embeddings)
        app.router.add_post("/v1/search", self.search)
        app.router.add_post("/v1/rerank", self._rerank.rerank)
        app.router.add_get("/v1/models", self.models)
        app.router.add_get("/health", self.health)
        return app

    def runner(self) -> web.AppRunner:
        """The app's runner, set up so that a client that disconnects cancels its request's work
        (aiohttp would otherwise finish it for nobody: on the GPU, a search nobody reads)."""
        return web.AppRunner(self.app(), handler_cancellation=True)

    async def embeddings(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        if "input" not in body:
            raise ApiError(400, "'input' is required", "input")
        texts = parse_inputs(body["input"], self._settings.api.max_inputs)
        try:
            adapter = requested_adapter(body.get("model"), self._model, self._pool.info.adapters)
        except UnknownAdapter as exc:
            raise ApiError(400, str(exc), "model", "adapter_not_found") from exc
        except UnknownModel as exc:
            raise ApiError(404, str(exc), "model", "model_not_found") from exc
        native = self._pool.info.native_dim
        dim = _int(body, "dimensions", 1, native) or native
        encoding = body.get("encoding_format") or "float"
        if encoding not in _ENCODINGS:
            raise ApiError(400, f"'encoding_format' must be one of {list(_ENCODINGS)}", "encoding_format")
        vectors = (await with_adapter(self._pool, adapter).embed_queries(texts, (dim,), None))[dim]
        # Counting the tokens of up to api.max_inputs texts takes a while: not on the event loop.
        tokens = sum(len(ids) for ids in await asyncio.to_thread(self._tokenizer.encode, texts))
        data = [
            {"object": "embedding", "index": i, "embedding": encode_vector(row, encoding)}
            for i, row in enumerate(vectors)
        ]
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        model = self._model if adapter is None else f"{self._model}:{adapter}"
        return web.json_response({"object": "list", "data": data, "model": model, "usage": usage})

    async def search(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        queries = parse_inputs(body.get("query"), self._settings.api.max_inputs)
        task = body.get("task")
        if task is not None and not isinstance(task, str):
            raise ApiError(400, "'task' must be a string", "task")
        try:
            sink = await self._follow() if self._follow else self._sink
        except ConfigError as exc:  # the serving version was made by another model than ours
            raise ApiError(503, str(exc), code="model_mismatch") from exc
        try:
            results = await search(
                self._settings,
                self._queries,
                sink,
                queries,
                dim=_int(body, "dim", 1, self._pool.info.native_dim),
                top_k=_int(body, "top_k", 1, 1000) or DEFAULT_TOP_K,
                instruction=task,
                funnel_factor=_int(body, "funnel_factor", 1, 1000),
                recall_target=_float(body, "recall_target"),
                latency_budget_ms=_float(body, "latency_budget_ms"),
                profile=self._profile,
                per_document=bool(body.get("per_document", False)),
                where=body.get("filter"),
                # A key bound to a tenant got a 403 for a body naming another (auth.require_key).
                tenant=body["tenant"] if body.get("tenant") is not None else request[TENANT],
            )
        except FilterError as exc:
            raise ApiError(400, str(exc), "filter") from exc
        except TenantRequired as exc:
            raise ApiError(400, str(exc), "tenant", "tenant_required") from exc
        except (ConfigError, ValueError) as exc:
            raise ApiError(400, str(exc)) from exc
        data = [
            {
                "query": r.query,
                "strategy": r.strategy,
                "routing": r.routing,
                "dim": r.dim,
                "hits": [asdict(h) for h in r.hits],
            }
            for r in results
        ]
        return web.json_response({"object": "list", "data": data})

    async def models(self, request: web.Request) -> web.Response:
        ids = model_ids(self._model, self._pool.info.adapters)
        models = [
            {"id": i, "object": "model", "created": self._created, "owned_by": "embedstream"} for i in ids
        ]
        return web.json_response({"object": "list", "data": models})

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "model": self._model})


def _deadline(timeout_s: float) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Middleware: a request still running after ``timeout_s`` is cancelled and answered 503."""

    @web.middleware
    async def deadline(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            async with asyncio.timeout(timeout_s) as limit:
                return await handler(request)
        except TimeoutError:
            if not limit.expired():
                raise  # a timeout of the work itself, not this deadline
            retry = {"Retry-After": str(max(1, round(timeout_s / 10)))}
            message = f"the request did not finish within {timeout_s:g}s (api.request_timeout_s)"
            return ApiError(503, message, code="timeout").response(retry)

    return deadline


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every failure as an OpenAI-style error body; unexpected ones are logged with their traceback."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except UnknownAdapter as exc:
        return ApiError(400, str(exc), "model", "adapter_not_found").response()
    except InputTooLong as exc:  # OpenAI's answer to an input over the context length
        return ApiError(400, str(exc), "input", "context_length_exceeded").response()
    except PoisonTexts as exc:  # fails even alone (the model raised, or it crashed the actor): not retriable
        reasons = "; ".join(list(exc.failed.values())[:3])
        message = f"the model cannot embed this input: {exc}" + (f" ({reasons})" if reasons else "")
        return ApiError(400, message, "input", "input_not_embeddable").response()
    except Backpressure as exc:  # the embedders are busy: this client should slow down
        retry = {"Retry-After": str(max(1, round(exc.retry_after)))}
        return ApiError(429, f"too many requests: {exc}", code="rate_limit_exceeded").response(retry)
    except RetriableError as exc:
        retry = {"Retry-After": str(max(1, round(exc.retry_after)))}
        return ApiError(503, f"temporarily unavailable: {exc}", code="unavailable").response(retry)
    except web.HTTPRequestEntityTooLarge as exc:
        return ApiError(413, exc.text or "request body too large").response()
    except web.HTTPException as exc:
        return ApiError(exc.status, exc.reason).response()
    except Exception as exc:
        log.exception("%s %s failed", request.method, request.path)
        return ApiError(500, f"internal error: {type(exc).__name__}").response()
