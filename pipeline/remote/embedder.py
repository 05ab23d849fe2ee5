"""The remote embedder backend: what :class:`workers.pool.EmbedderPool` offers pipeline/, over HTTP.

:class:`RemoteEmbedder` embeds through an OpenAI-compatible ``/v1/embeddings`` endpoint (SGLang, vLLM,
TEI, another `python -m pipeline serve`) and keeps this side's rules, not the server's:

* **Tokens counted here**, with ``model.name_or_path``'s tokenizer (the chunker's): a request holds at
  most ``embedder.max_request_tokens`` tokens and ``max_request_inputs`` texts; a text longer than the
  model takes is refused (InputTooLong), never sent to be truncated.
* **Matryoshka here**: the server's full vectors are cut to each dimension and L2-normalized by
  :func:`workers.model.matryoshka.cut_and_normalize_array` — ``dimensions`` is never asked for, and
  whatever normalization the server applied does not matter (cut first, then normalize).
* **Answers checked** (count, ``index`` order, width, finite values: :mod:`pipeline.remote.client`).
* **Retries**: a try that timed out, lost its connection, got 408/429/5xx or a malformed answer is
  tried again after a capped exponential backoff of at least the server's Retry-After, up to
  ``max_attempts`` tries; then EmbedderUnavailable (retriable) from the last failure.
* **Backpressure**: at most ``concurrent_requests`` in flight, at most ``max_waiting_requests``
  waiting; a call that would wait beyond that raises Backpressure with ``retry_after`` at once.
* **Refused texts**: when the server refuses a request's texts (400/413/422), the request is split
  in halves until the refused texts are alone; they are raised in PoisonTexts' ``failed`` with the
  server's reason (the caller dead-letters their documents), the other texts' vectors are dropped.
* **Queries** are formatted here as the actors format them (Qwen3: ``Instruct: {task}\\nQuery:{q}``).

Imports neither torch nor Ray (metrics are no-ops outside Ray).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.ingest.retry import Backoff
from pipeline.remote.client import EmbeddingsClient, EndpointUnavailable, MalformedAnswer, RejectedInputs
from pipeline.remote.metrics import RemoteMetrics
from pipeline.remote.requests import TokenCounter, plan_requests
from pipeline.settings.embedder import EmbedderSettings
from workers.errors import Backpressure, ConfigError, EmbedderUnavailable, PoisonTexts
from workers.model.embedding_model import ModelInfo
from workers.model.inputs import ModelInput, texts_of
from workers.model.matryoshka import cut_and_normalize_array, validate_dims
from workers.prompts import format_query
from workers.settings import ModelSettings

log = logging.getLogger(__name__)


class RemoteEmbedder:
    """Embeds on a remote OpenAI-compatible endpoint with the guarantees of the module docstring.

    ``info`` describes the model as the actors would (its ``native_dim`` is what the endpoint
    answered at start).  Many asyncio tasks may call :meth:`embed` at once.
    """

    started_here = True
    """Always: a remote backend has no shared actors to leave running."""

    def __init__(
        self,
        settings: EmbedderSettings,
        model: ModelSettings,
        client: EmbeddingsClient,
        tokenizer: TokenCounter,
        info: ModelInfo,
        metrics: RemoteMetrics,
    ) -> None:
        self._settings = settings
        self._model = model
        self._client = client
        self._tokenizer = tokenizer
        self._info = info
        self._metrics = metrics
        self._slots = asyncio.Semaphore(settings.concurrent_requests)
        self._inflight = self._waiting = 0
        self._latency_s = 0.1  # moving average of answered requests: the basis of retry_after
        self._counts = {"requests": 0, "retries": 0, "tokens": 0, "texts": 0}
        self._closing: asyncio.Task[None] | None = None

    @property
    def info(self) -> ModelInfo:
        """The model the endpoint serves, as this side knows it."""
        return self._info

    @property
    def size(self) -> int:
        """One endpoint (however many servers stand behind it)."""
        return 1

    async def embed(
        self, texts: Sequence[ModelInput], dims: tuple[int, ...], adapter: str | None = None
    ) -> dict[int, np.ndarray]:
        """``{dim: float32 (len(texts), dim)}``, rows unit-length and in input order.  The endpoint
        serves one model: a LoRA ``adapter`` is refused with ConfigError (name it in the server's model).
        The endpoint tokenizes for itself: a :class:`~workers.model.inputs.TokenizedText` is sent as its text.

        Raises ConfigError for dims outside ``1..native_dim``, InputTooLong for a text the model
        cannot take, Backpressure when the client is full, EmbedderUnavailable after ``max_attempts``
        failed tries of a request, PoisonTexts for texts the server refuses (module docstring)."""
        if adapter is not None:
            raise ConfigError(
                f"the remote embedder serves one model; LoRA adapter {adapter!r} is not offered "
                "(serve the adapter from the endpoint and name it in embedder.model)"
            )
        validate_dims(dims, self._info.native_dim)
        texts = texts_of(texts)
        if not texts:
            return {d: np.zeros((0, d), dtype=np.float32) for d in dims}
        counts = await asyncio.to_thread(self._count, texts)
        requests = plan_requests(counts, self._info.max_length, self._settings)
        if self._waiting and self._waiting + len(requests) > self._settings.max_waiting_requests:
            wait = self._latency_s * (self._waiting + self._inflight) / self._settings.concurrent_requests
            raise Backpressure(
                f"{self._waiting} requests already wait for the endpoint "
                f"(embedder.max_waiting_requests={self._settings.max_waiting_requests})",
                retry_after=round(max(0.05, wait), 3),
            )
        parts = await asyncio.gather(
            *(self._isolating([texts[i] for i in r], [counts[i] for i in r]) for r in requests),
            return_exceptions=True,
        )  # every request ends before we go on
        failed: dict[str, str] = {}
        for part in parts:
            if isinstance(part, PoisonTexts):
                failed |= part.failed
            elif isinstance(part, BaseException):
                raise part
        if failed:
            raise PoisonTexts((), 0, failed)
        full = np.concatenate([p for p in parts if isinstance(p, np.ndarray)])
        return cut_and_normalize_array(full, dims)

    async def embed_queries(
        self,
        queries: Sequence[str],
        dims: tuple[int, ...],
        task: str | None = None,
        adapter: str | None = None,
    ) -> dict[int, np.ndarray]:
        """Like :meth:`embed`, for search queries formatted as the actors format them
        (:func:`workers.prompts.format_query`: Qwen3 gets the instruction, other models the raw query)."""
        formatted = [format_query(self._model, self._info.model_type, q, task) for q in queries]
        return await self.embed(formatted, dims, adapter)

    def _count(self, texts: list[str]) -> list[int]:
        special = self._tokenizer.num_special_tokens
        return [self._tokenizer.count_tokens(text) + special for text in texts]

    async def _isolating(self, texts: list[str], counts: list[int]) -> np.ndarray:
        """The full vectors of one planned request; a refused request is split until the refused
        texts are alone, and those are raised as PoisonTexts' ``failed``."""
        try:
            return await self._request(texts, sum(counts))
        except RejectedInputs as exc:
            if len(texts) == 1:
                raise PoisonTexts((), 0, {texts[0]: exc.reason}) from exc
            half = len(texts) // 2
            log.warning("the endpoint refused a request of %d texts; splitting it: %s", len(texts), exc)
            parts = await asyncio.gather(
                self._isolating(texts[:half], counts[:half]),
                self._isolating(texts[half:], counts[half:]),
                return_exceptions=True,
            )
            failed = {t: why for p in parts if isinstance(p, PoisonTexts) for t, why in p.failed.items()}
            for part in parts:
                if isinstance(part, BaseException) and not isinstance(part, PoisonTexts):
                    raise part from exc
            if failed:
                raise PoisonTexts((), 0, failed) from exc
            return np.concatenate([p for p in parts if isinstance(p, np.ndarray)])

    async def _request(self, texts: list[str], tokens: int) -> np.ndarray:
        """One request, tried up to ``max_attempts`` times as the module docstring says."""
        backoff = Backoff(self._settings.backoff_base_s, self._settings.backoff_max_s)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._try(texts, tokens)
            except (EndpointUnavailable, MalformedAnswer) as exc:
                if attempt >= self._settings.max_attempts:
                    raise EmbedderUnavailable(
                        f"embedding {len(texts)} texts on the remote endpoint failed {attempt} times; "
                        f"last: {exc}",
                        retry_after=exc.retry_after,
                    ) from exc
                # Retry-After is a floor (the jitter of the backoff never cuts it), capped by backoff_max_s.
                delay = max(min(exc.retry_after, self._settings.backoff_max_s), backoff.next())
                self._counts["retries"] += 1
                log.warning("remote embedding try %d failed (%s); retrying in %.2fs", attempt, exc, delay)
                await asyncio.sleep(delay)

    async def _try(self, texts: list[str], tokens: int) -> np.ndarray:
        """One HTTP try in one of the ``concurrent_requests`` slots; its outcome is counted."""
        self._waiting += 1
        self._record_load()
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        self._inflight += 1
        self._record_load()
        started = time.monotonic()
        try:
            vectors = await self._client.embed(texts, self._info.native_dim)
        except Exception as exc:  # a cancelled caller is no failed try
            self._metrics.tried(_outcome(exc))
            raise
        finally:
            self._inflight -= 1
            self._slots.release()
            self._record_load()
        seconds = time.monotonic() - started
        self._latency_s = 0.8 * self._latency_s + 0.2 * seconds
        self._metrics.tried("ok")
        self._metrics.answered(tokens, seconds)
        self._counts["requests"] += 1
        self._counts["tokens"] += tokens
        self._counts["texts"] += len(texts)
        return vectors

    def _record_load(self) -> None:
        self._metrics.load(self._inflight, self._waiting)

    async def stats(self) -> list[dict[str, Any]]:
        """This client's counters, as one entry (the actors' pool gives one per actor)."""
        return [
            {
                "actor": f"remote {self._client.url}",
                "inflight_requests": self._inflight,
                "waiting_requests": self._waiting,
                "queued_tokens": 0,  # the endpoint's own queue is not visible from here
                **self._counts,
            }
        ]

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._client.close()

    def release(self) -> None:
        """Close the HTTP connections (soon: on the running loop, if any)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop runs: the session's loop is gone, and its connections with it
        self._closing = loop.create_task(self._client.close(), name="close-remote-embedder")
        self._closing.add_done_callback(_log_failure)

    def shutdown(self) -> None:
        """:meth:`release` (nothing of a remote backend outlives this process)."""
        self.release()


def _outcome(exc: BaseException) -> str:
    """The ``outcome`` tag of a failed try."""
    if isinstance(exc, MalformedAnswer):
        return "malformed"
    if isinstance(exc, RejectedInputs | ConfigError):
        return "rejected"
    if isinstance(exc, EndpointUnavailable):
        cause = exc.__cause__
        status = getattr(cause, "status", None)
        if isinstance(cause, TimeoutError) or status == 408:
            return "timeout"
        if status == 429:
            return "throttled"
        return "server_error" if isinstance(status, int) and status >= 500 else "unavailable"
    return "unavailable"


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("closing the remote embedder's connections failed", exc_info=task.exception())
