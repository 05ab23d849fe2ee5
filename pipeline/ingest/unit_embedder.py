"""Embedding one unit of work on the pool: requests by token budget, retries, poison texts.

Nothing here imports torch or Ray: the pool is reached through the :class:`Embedder` protocol.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

import numpy as np

from pipeline.ingest.reasons import ReasonCode
from pipeline.ingest.retry import retry_transient
from pipeline.ingest.units import WorkUnit
from workers.errors import PoisonTexts
from workers.model.inputs import ModelInput

log = logging.getLogger(__name__)


class Embedder(Protocol):
    """What the consumer needs from the embedder pool."""

    async def embed(self, texts: list[ModelInput], dims: tuple[int, ...]) -> dict[int, np.ndarray]: ...


class UnitEmbedder:
    """Embeds every text of a unit, one vector row per text per dimension, in text order.

    Guarantees: transient failures (RetriableError) are retried with capped backoff, forever;
    documents with a text that crashes the embedder actors, or that the model fails on when run alone
    (PoisonTexts), are moved to the unit's dead letters with the reason, the id's previous event in
    the unit (if any) is planned in their place, and the texts are embedded again, so one poison
    document never blocks its unit.
    """

    def __init__(
        self, embedder: Embedder, dims: tuple[int, ...], max_request_tokens: int, backoff_cap_s: float
    ) -> None:
        self._embedder = embedder
        self._dims = dims
        self._max_request_tokens = max_request_tokens
        self._backoff_cap_s = backoff_cap_s

    async def embed(self, unit: WorkUnit) -> dict[int, np.ndarray]:
        """Vectors for ``unit.texts`` (which shrinks when documents are dead-lettered here)."""
        while True:
            try:
                return await self._embed_texts(unit.texts, unit.tokens)
            except PoisonTexts as exc:
                reason = f"embedding it crashed the embedder actor {exc.crashes} time(s), run alone"
                rejected = [(set(exc.texts), reason, ReasonCode.EMBEDDER_CRASH)]
                for text, why in exc.failed.items():
                    rejected.append(
                        ({text}, f"the model failed on it, run alone: {why}", ReasonCode.EMBEDDER_ERROR)
                    )
                for texts, why, code in rejected:
                    for doc_id in unit.reject_texts(texts, why, code):
                        log.warning("document %r dead-lettered: %s", doc_id, why)

    async def _embed_texts(self, texts: list[ModelInput], tokens: int) -> dict[int, np.ndarray]:
        """``texts`` in pool requests of about ``max_request_tokens`` each, side by side; a
        PoisonTexts raised here holds the poison texts of every request."""
        if not texts:
            return {d: np.zeros((0, d), dtype=np.float32) for d in self._dims}
        requests: list[list[ModelInput]] = [[]]
        budget = 0
        per_text = max(1, tokens // len(texts))
        for text in texts:
            if requests[-1] and budget + per_text > self._max_request_tokens:
                requests.append([])
                budget = 0
            requests[-1].append(text)
            budget += per_text
        calls = (self._embed_request(request) for request in requests)
        results = await asyncio.gather(*calls, return_exceptions=True)  # every call ends before we go on
        poisoned = [r for r in results if isinstance(r, PoisonTexts)]
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, PoisonTexts):
                raise result
        if poisoned:
            texts_out = tuple(text for r in poisoned for text in r.texts)
            failed = {text: why for r in poisoned for text, why in r.failed.items()}
            raise PoisonTexts(texts_out, max(r.crashes for r in poisoned), failed)
        vectors = [r for r in results if isinstance(r, dict)]
        return {dim: np.concatenate([r[dim] for r in vectors]) for dim in self._dims}

    async def _embed_request(self, texts: list[ModelInput]) -> dict[int, np.ndarray]:
        return await retry_transient(
            "embedding", lambda: self._embedder.embed(texts, self._dims), self._backoff_cap_s
        )
