"""The reranker actor: one :class:`~workers.model.reranker_model.RerankerModel` behind a micro-batcher.

The same machinery as the embedder actor (:mod:`workers.actor`): pairs are tokenized on their own
thread, batched by token budget in the batcher's query lane (bounded: Backpressure past
``max_priority_tokens``), scored on the batcher's forward thread, split and retried on failure, and
recorded in the embedder metrics (:mod:`workers.metrics`) under the actor name ``reranker-{i}``.  A
model broken for good (its probe fails after a pair did) exits the process so that Ray restarts it.
Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from workers.actor_base import ModelActor, assigned_device, configure_logging
from workers.model.reranker_model import RerankerInfo, RerankerModel
from workers.reranker_settings import RerankerSettings

log = logging.getLogger(__name__)

SCORE_DIM = (1,)
"""The batcher carries results as ``{dim: rows}``: a reranker's rows are its one score."""


class RerankerActor(ModelActor):
    """Scores (query, document) pairs; concurrent :meth:`score` calls share forward passes.

    Run it as a Ray async actor (see :mod:`workers.reranker_pool`).  The model goes on CUDA when Ray
    assigned this actor a GPU, else on the CPU.
    """

    def __init__(self, settings: RerankerSettings, index: int, namespace: str = "") -> None:
        configure_logging()
        self._name = f"reranker-{index}"
        started = time.monotonic()
        self._model = RerankerModel.load(settings, device=assigned_device())
        self._load_s = time.monotonic() - started
        self._info = self._model.info()
        log.info("%s loaded %s in %.1fs", self._name, self._info, self._load_s)
        probe = self._model.encode_pairs("ok", ["ok"])
        self._start_batching(
            self._model.run_batch,
            settings.batching,
            packed=self._model.packed,
            probe=lambda: self._model.score_ids(probe),
            namespace=namespace,
            tokenize_threads=1,
        )

    async def ready(self) -> RerankerInfo:
        """What this actor serves; returns once the model is loaded (the constructor did that)."""
        return self._info

    async def score(self, query: str, documents: list[str], instruction: str | None = None) -> np.ndarray:
        """Float32 ``(len(documents),)`` scores in [0, 1], in input order.

        Raises InputTooLong for a pair over the model's limit (nothing is scored then), Backpressure
        when the queue is full, FailedInputs naming the pairs the model fails on even alone.
        """
        out = await self._submit(
            lambda: self._model.encode_pairs(query, documents, instruction), SCORE_DIM, priority=True
        )
        return out[SCORE_DIM[0]][:, 0]

    async def stats(self) -> dict[str, Any]:
        """The batcher's counters plus who this actor is."""
        return self._stats()
