"""The reranker actor: one :class:`~workers.model.reranker_model.RerankerModel` behind a micro-batcher.

The same machinery as the embedder actor (:mod:`workers.actor`): pairs are tokenized on their own
thread, batched by token budget in the batcher's query lane (bounded: Backpressure past
``max_priority_tokens``), scored on the batcher's forward thread, split and retried on failure, and
recorded in the embedder metrics (:mod:`workers.metrics`) under the actor name ``reranker-{i}``.  A
model broken for good (its probe fails after a pair did) exits the process so that Ray restarts it.
Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import ray

from workers.actor import _configure_logging, _was_restarted
from workers.batcher import MicroBatcher
from workers.metrics import ActorMetrics
from workers.model.reranker_model import RerankerInfo, RerankerModel
from workers.reranker_settings import RerankerSettings

log = logging.getLogger(__name__)

SCORE_DIM = (1,)
"""The batcher carries results as ``{dim: rows}``: a reranker's rows are its one score."""


class RerankerActor:
    """Scores (query, document) pairs; concurrent :meth:`score` calls share forward passes.

    Run it as a Ray async actor (see :mod:`workers.reranker_pool`).  The model goes on CUDA when Ray
    assigned this actor a GPU, else on the CPU.
    """

    def __init__(self, settings: RerankerSettings, index: int, namespace: str = "") -> None:
        _configure_logging()
        self._name = f"reranker-{index}"
        device = "cuda" if ray.is_initialized() and ray.get_gpu_ids() else "cpu"
        started = time.monotonic()
        self._model = RerankerModel.load(settings, device=device)
        self._load_s = time.monotonic() - started
        self._info = self._model.info()
        log.info("%s loaded %s in %.1fs", self._name, self._info, self._load_s)
        self._metrics = ActorMetrics(namespace, self._name, settings.batching.max_batch_tokens)
        if _was_restarted():
            log.warning("%s restarted by Ray after the previous process died", self._name)
            self._metrics.restarted()
        self._inflight = 0
        probe = self._model.encode_pairs("ok", ["ok"])
        self._batcher = MicroBatcher(
            self._model.run_batch,
            settings.batching,
            packed=self._model.packed,
            on_batch=self._on_batch,
            on_failure=self._metrics.forward_failed,
            probe=lambda: self._model.score_ids(probe),
            on_broken=self._exit_broken,
        )
        self._tokenize = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenize")

    async def ready(self) -> RerankerInfo:
        """What this actor serves; returns once the model is loaded (the constructor did that)."""
        return self._info

    async def score(self, query: str, documents: list[str], instruction: str | None = None) -> np.ndarray:
        """Float32 ``(len(documents),)`` scores in [0, 1], in input order.

        Raises InputTooLong for a pair over the model's limit (nothing is scored then), Backpressure
        when the queue is full, FailedInputs naming the pairs the model fails on even alone.
        """
        loop = asyncio.get_running_loop()
        self._inflight += 1
        try:
            pairs = await loop.run_in_executor(
                self._tokenize, self._model.encode_pairs, query, documents, instruction
            )
            self._metrics.load(self._batcher.stats().queued_tokens, self._inflight)
            out = await self._batcher.submit(pairs, SCORE_DIM, priority=True)
        finally:
            self._inflight -= 1
            self._metrics.load(self._batcher.stats().queued_tokens, self._inflight)
        return out[SCORE_DIM[0]][:, 0]

    async def stats(self) -> dict[str, Any]:
        """The batcher's counters plus who this actor is."""
        return {
            "actor": self._name,
            "pid": os.getpid(),
            "device": self._info.device,
            "load_s": round(self._load_s, 3),
            **dataclasses.asdict(self._batcher.stats()),
        }

    def _exit_broken(self, error: BaseException) -> None:
        log.error("%s: the model is broken (%r); exiting so that Ray restarts this actor", self._name, error)
        os._exit(1)

    def _on_batch(self, tokens: int, padded: int, seconds: float) -> None:
        self._metrics.batch(tokens, padded, seconds)
        self._metrics.load(self._batcher.stats().queued_tokens, self._inflight)
