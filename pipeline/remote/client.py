"""One ``POST {base_url}/embeddings`` request: sent, its answer checked, its failure typed.

What can go wrong is sorted here, once, into what the caller does about it:

* :class:`EndpointUnavailable` (retriable): a timeout, a refused or dropped connection, HTTP 408,
  429 or 5xx; ``retry_after`` is the server's Retry-After when it sent one.
* :class:`MalformedAnswer` (retriable): HTTP 200 whose body is not the OpenAI schema, or holds
  another count of vectors than texts sent, an ``index`` missing, repeated or out of range, a vector
  of another width than the others (or than the model's, once known), or a non-finite value.  Nothing
  of such an answer is used.
* :class:`RejectedInputs` (not retriable): HTTP 400, 413 or 422: the server refuses these texts.
* ConfigError: HTTP 401, 403 or 404: the key or the model name is wrong; no retry helps.

Every error is raised ``from`` its cause.  Imports neither torch nor transformers.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import numpy as np

from workers.errors import ConfigError, EmbedderUnavailable, PoisonInput

_RETRIED_STATUS = frozenset({408, 429})
_REJECTED_STATUS = frozenset({400, 413, 422})
_ERROR_TEXT = 300  # characters of an error body quoted in a message


class EndpointUnavailable(EmbedderUnavailable):
    """The endpoint did not answer in time, dropped the connection, or answered 408, 429 or 5xx."""


class MalformedAnswer(EmbedderUnavailable):
    """The endpoint answered 200 with something that is not one valid vector per text sent."""


class RejectedInputs(PoisonInput):
    """The endpoint refused the texts of a request (HTTP 400, 413 or 422) with ``reason``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __reduce__(self) -> tuple[type[RejectedInputs], tuple[str]]:
        return type(self), (self.reason,)


def retry_after_of(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds a Retry-After header asks to wait (delta-seconds or an HTTP date); None without one."""
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def parse_embeddings(body: Any, count: int, width: int | None) -> np.ndarray:
    """The ``(count, width)`` float32 vectors of an OpenAI embeddings answer, row ``i`` the one whose
    ``index`` is ``i``; ``width`` None accepts any one width.  MalformedAnswer says what is wrong."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise MalformedAnswer("the answer has no 'data' list")
    if len(data) != count:
        raise MalformedAnswer(f"the answer holds {len(data)} vectors for {count} texts")
    rows: list[Any] = [None] * count
    for item in data:
        index = item.get("index") if isinstance(item, dict) else None
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
            raise MalformedAnswer(f"an answer item has index {index!r}; expected 0..{count - 1}")
        if rows[index] is not None:
            raise MalformedAnswer(f"index {index} appears twice in the answer")
        rows[index] = item.get("embedding")
    try:
        vectors = np.asarray(rows, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise MalformedAnswer(
            f"the answer's embeddings are not lists of numbers of one length: {exc}"
        ) from exc
    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise MalformedAnswer(f"the answer's embeddings have shape {vectors.shape}, not (texts, width)")
    if width is not None and vectors.shape[1] != width:
        raise MalformedAnswer(
            f"the answer's vectors have {vectors.shape[1]} components; the model has {width}"
        )
    if not np.isfinite(vectors).all():
        raise MalformedAnswer("the answer holds NaN or infinite components")
    return vectors


class EmbeddingsClient:
    """Posts texts to one OpenAI-compatible endpoint; one aiohttp session, closed by :meth:`close`."""

    def __init__(self, base_url: str, model: str, api_key: str | None, timeout_s: float) -> None:
        self.url = base_url.rstrip("/") + "/embeddings"
        self._model = model
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def embed(self, texts: Sequence[str], width: int | None) -> np.ndarray:
        """The full vectors of ``texts`` as the server computed them (neither cut nor normalized here);
        raises as the module says."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        # Never 'dimensions': the server's cut (and its normalization order) is not ours to trust.
        payload = {"model": self._model, "input": list(texts), "encoding_format": "float"}
        try:
            async with self._session.post(self.url, json=payload) as response:
                status, headers = response.status, response.headers
                raw = await response.read()
        except TimeoutError as exc:
            raise EndpointUnavailable(
                f"{self.url} did not answer within {self._timeout.total:g}s", retry_after=0.0
            ) from exc
        except aiohttp.ClientError as exc:  # refused, reset, dropped mid-answer, bad HTTP
            raise EndpointUnavailable(f"{self.url}: {type(exc).__name__}: {exc}", retry_after=0.0) from exc
        if status != 200:
            self._raise_for(status, headers, raw)
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise MalformedAnswer(f"{self.url} answered 200 with a body that is not JSON: {exc}") from exc
        return parse_embeddings(body, len(texts), width)

    def _raise_for(self, status: int, headers: Mapping[str, str], raw: bytes) -> None:
        said = raw[:_ERROR_TEXT].decode("utf-8", "replace").strip()
        message = f"{self.url} answered HTTP {status}: {said}"
        cause = aiohttp.ClientResponseError(None, (), status=status, message=said)  # type: ignore[arg-type]
        if status in _RETRIED_STATUS or status >= 500:
            wait = retry_after_of(headers)
            raise EndpointUnavailable(message, retry_after=wait or 0.0) from cause
        if status in _REJECTED_STATUS:
            raise RejectedInputs(message) from cause
        if status in (401, 403):
            raise ConfigError(f"{message} (check embedder.api_key)") from cause
        if status == 404:
            raise ConfigError(f"{message} (check embedder.base_url and embedder.model_name)") from cause
        raise EndpointUnavailable(message, retry_after=0.0) from cause

    async def close(self) -> None:
        """Close the HTTP session (requests still in flight fail)."""
        if self._session is not None:
            await self._session.close()
            self._session = None
