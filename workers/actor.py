"""The embedder actor: one model on one device behind a micro-batcher, as a Ray async actor.

Importing this module imports neither torch nor transformers (the model loads them when it loads),
so the driver (the Kafka consumer) can import :mod:`workers.pool`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from workers.actor_base import ModelActor, assigned_device, configure_logging
from workers.model.embedding_model import EmbeddingModel, ModelInfo
from workers.model.inputs import ModelInput
from workers.model.matryoshka import validate_dims
from workers.prompts import format_query
from workers.settings import BatchSettings, ModelSettings

log = logging.getLogger(__name__)

_LOG_EVERY_S = 30.0
"""How often an actor under load logs its throughput."""


class EmbedderActor(ModelActor):
    """Holds one :class:`~workers.model.embedding_model.EmbeddingModel`; concurrent :meth:`embed` calls
    share forward passes.

    Run it as a Ray async actor (see :mod:`workers.pool`).  The model goes on CUDA when Ray assigned
    this actor a GPU, else on the CPU.  Tokenization runs on its own thread and forward passes on the
    batcher's, so the event loop only routes calls.

    A forward pass that fails (out of memory, or any other error of the model) is split and retried by
    the batcher (:mod:`workers.batcher`); the model frees the CUDA cache after an out-of-memory.  Texts
    that fail alone fail the call with :class:`~workers.errors.FailedInputs` (the others ran).  If a
    probe of a word fails right after a text did, the model is broken, not the text: the process
    exits and Ray restarts the actor on a fresh CUDA context.
    """

    def __init__(
        self, model_settings: ModelSettings, batch_settings: BatchSettings, index: int, namespace: str = ""
    ) -> None:
        """``namespace`` is the Ray namespace the pool named this actor in (a tag of its metrics)."""
        configure_logging()
        self._name = f"embedder-{index}"
        started = time.monotonic()
        self._model = EmbeddingModel.load(model_settings, device=assigned_device())
        self._model_settings = model_settings
        self._load_s = time.monotonic() - started  # the price a restart pays: reported in stats
        self._info = self._model.info()
        log.info(
            "%s loaded %s in %.1fs: device=%s dtype=%s pooling=%s dim=%d max_length=%d",
            self._name,
            self._info.name,
            self._load_s,
            self._info.device,
            self._info.dtype,
            self._info.pooling,
            self._info.native_dim,
            self._info.max_length,
        )
        # A one-word input: a text is blamed for failing alone only if this still embeds right after.
        probe_ids = self._model.encode_ids(["ok"])
        self._start_batching(
            self._model.embed_ids,
            batch_settings,
            packed=self._model.packed,
            launch=self._model.launch_ids,
            probe=lambda: self._model.embed_ids(probe_ids, (self._info.native_dim,)),
            namespace=namespace,
            tokenize_threads=batch_settings.tokenize_threads,
        )
        self._logged_at = time.monotonic()
        self._logged = self._batcher.stats()

    async def ready(self) -> ModelInfo:
        """What this actor serves; returns once the model is loaded (the constructor did that)."""
        return self._info

    async def model_settings(self) -> ModelSettings:
        """The settings this actor loaded its model with (a worker joining it checks they are its own)."""
        return self._model_settings

    async def embed(
        self, texts: list[ModelInput], dims: tuple[int, ...], adapter: str | None = None
    ) -> dict[int, np.ndarray]:
        """``{dim: float32 (len(texts), dim)}``, rows unit-length and in input order, computed with the
        LoRA adapter ``adapter`` of ``model.adapters`` (None: the base model).  A
        :class:`~workers.model.inputs.TokenizedText` is embedded from its ids, not tokenized again.

        Raises ConfigError for dims outside ``1..native_dim``, UnknownAdapter for an adapter not
        loaded, InvalidTokenIds for ids that are not this model's tokens, Backpressure when the
        queue is full.
        """
        return await self._embed(texts, dims, priority=False, adapter=adapter)

    async def embed_queries(
        self, queries: list[str], dims: tuple[int, ...], task: str | None = None, adapter: str | None = None
    ) -> dict[int, np.ndarray]:
        """Like :meth:`embed`, for search queries: formatted with ``task`` the way the model expects
        (:func:`~workers.settings.format_query`) and batched in the query lane, ahead of ingestion."""
        texts = [format_query(self._model_settings, self._info.model_type, q, task) for q in queries]
        return await self._embed(texts, dims, priority=True, adapter=adapter)

    async def _embed(
        self, texts: Sequence[ModelInput], dims: tuple[int, ...], *, priority: bool, adapter: str | None
    ) -> dict[int, np.ndarray]:
        validate_dims(dims, self._info.native_dim)
        self._model.check_adapter(adapter)
        result = await self._submit(
            lambda: self._model.encode_ids(texts), dims, priority=priority, adapter=adapter
        )
        self._maybe_log()
        return result

    async def stats(self) -> dict[str, Any]:
        """The batcher's counters plus who this actor is, and the seconds spent tokenizing."""
        return self._stats(tokenize_seconds=self._tokenize_s)

    def _maybe_log(self) -> None:
        """Every ``_LOG_EVERY_S`` under load: throughput since the last line."""
        now = time.monotonic()
        elapsed = now - self._logged_at
        if elapsed < _LOG_EVERY_S:
            return
        stats, last = self._batcher.stats(), self._logged
        padded = stats.padded_tokens - last.padded_tokens
        log.info(
            "%s: %.1f batches/s, %.0f tokens/s, padding efficiency %.2f, %d tokens queued, %d refusals",
            self._name,
            (stats.batches - last.batches) / elapsed,
            (stats.tokens - last.tokens) / elapsed,
            (stats.tokens - last.tokens) / padded if padded else 1.0,
            stats.queued_tokens,
            stats.rejected_requests - last.rejected_requests,
        )
        self._logged_at, self._logged = now, stats
