"""``POST /v1/rerank`` of the HTTP API: the request schema that TEI, Jina and Cohere clients send.

Request: ``query`` (a non-empty string), ``documents`` (Jina, Cohere) or ``texts`` (TEI) — a non-empty
list of strings, or of ``{"text": ...}`` objects as Cohere's v1 accepted — ``top_n`` (default: all),
``return_documents`` (default false; TEI's ``return_text`` is read too), optional ``model`` (404 when
it is not the reranker served here) and ``instruction`` (Qwen3 rerankers' <Instruct>; default
``reranker.instruction``).

Answer (Jina's and Cohere's shape): ``{"id", "model", "results": [{"index", "relevance_score",
"document": {"text"}?}]}``, best first (ties in input order), ``index`` into the request's documents.
Errors are the API's: 400 for a bad body, a pair over the reranker's limit (``context_length_exceeded``,
naming the document; never truncated) or one the model fails on even alone; 404 when no reranker is
configured; 429 with Retry-After when every reranker queue stayed full; 503 when the actors are
unavailable or the request ran past ``api.request_timeout_s``.  API keys apply as on every /v1 route.
"""

from __future__ import annotations

import uuid
from typing import Any, cast

from aiohttp import web

from pipeline.search.api_errors import ApiError, json_body
from pipeline.search.rerank import Reranker
from pipeline.settings import RerankerSettings
from workers.errors import FailedInputs, InputTooLong


def parse_documents(body: dict[str, Any], max_documents: int) -> list[str]:
    """The documents of a rerank body: ``documents`` or ``texts``, strings or ``{"text": str}``."""
    key = "documents" if "documents" in body else "texts"
    raw = body.get(key)
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, "'documents' (or 'texts') must be a non-empty list of strings", key)
    documents = [item.get("text") if isinstance(item, dict) else item for item in raw]
    if not all(isinstance(document, str) for document in documents):
        raise ApiError(400, f"'{key}' must hold strings or objects with a string 'text'", key)
    if len(documents) > max_documents:
        limit = f"at most {max_documents} (reranker.max_documents)"
        raise ApiError(400, f"'{key}' holds {len(documents)} documents; {limit}", key)
    return cast(list[str], documents)


class RerankHandler:
    """The ``/v1/rerank`` handler over one reranker (None: answered 404, none is configured)."""

    def __init__(self, reranker: Reranker | None, settings: RerankerSettings | None) -> None:
        self._reranker, self._settings = reranker, settings

    async def rerank(self, request: web.Request) -> web.Response:
        if self._reranker is None or self._settings is None:
            raise ApiError(
                404, "no reranker is served here (set [reranker] name_or_path)", code="no_reranker"
            )
        body = await json_body(request)
        query = body.get("query")
        if not isinstance(query, str) or not query:
            raise ApiError(400, "'query' must be a non-empty string", "query")
        documents = parse_documents(body, self._settings.max_documents)
        model = body.get("model")
        if model is not None and model != self._settings.name_or_path:
            raise ApiError(404, f"reranker {model!r} is not served here; this server serves "
                           f"{self._settings.name_or_path!r}", "model", "model_not_found")  # fmt: skip
        top_n = body.get("top_n")
        if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 1):
            raise ApiError(400, "'top_n' must be a positive integer", "top_n")
        instruction = body.get("instruction")
        if instruction is not None and not isinstance(instruction, str):
            raise ApiError(400, "'instruction' must be a string", "instruction")
        with_text = bool(body.get("return_documents", body.get("return_text", False)))
        try:
            scores = await self._reranker.score(query, documents, instruction or None)
        except InputTooLong as exc:
            raise ApiError(
                400, f"document {exc.index}: {exc}", "documents", "context_length_exceeded"
            ) from exc
        except FailedInputs as exc:
            raise ApiError(400, f"the reranker cannot score this input: {exc}", "documents",
                           "input_not_embeddable") from exc  # fmt: skip
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[: top_n or len(scores)]
        results = []
        for index in order:
            result: dict[str, Any] = {"index": index, "relevance_score": scores[index]}
            if with_text:
                result["document"] = {"text": documents[index]}
            results.append(result)
        answer = {"id": uuid.uuid4().hex, "model": self._settings.name_or_path, "results": results}
        return web.json_response(answer)
