"""The pool seen through one LoRA adapter: what a pipeline's ingestion and its collections' searches use.

Which adapter a pipeline embeds with is its own choice (``model.adapter``, or the one its collections
record), not the actors': several pipelines share one namespace's actors, each through its own view.
Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np

from workers.model.info import ModelInfo
from workers.model.inputs import ModelInput


class AdaptablePool(Protocol):
    """What a view needs of the pool (:class:`workers.pool.EmbedderPool` is one)."""

    @property
    def info(self) -> ModelInfo: ...

    async def embed(
        self, texts: Sequence[ModelInput], dims: tuple[int, ...], adapter: str | None = None
    ) -> dict[int, np.ndarray]: ...

    async def embed_queries(
        self,
        queries: Sequence[str],
        dims: tuple[int, ...],
        task: str | None = None,
        adapter: str | None = None,
    ) -> dict[int, np.ndarray]: ...


class AdapterView:
    """:meth:`embed` and :meth:`embed_queries` of ``pool``, every call with adapter ``adapter``."""

    def __init__(self, pool: AdaptablePool, adapter: str) -> None:
        self.pool = pool
        self.adapter = adapter

    @property
    def info(self) -> ModelInfo:
        return self.pool.info

    async def embed(self, texts: Sequence[ModelInput], dims: tuple[int, ...]) -> dict[int, np.ndarray]:
        """:meth:`workers.pool.EmbedderPool.embed` with this view's adapter."""
        return await self.pool.embed(texts, dims, self.adapter)

    async def embed_queries(
        self, queries: Sequence[str], dims: tuple[int, ...], task: str | None = None
    ) -> dict[int, np.ndarray]:
        """:meth:`workers.pool.EmbedderPool.embed_queries` with this view's adapter."""
        return await self.pool.embed_queries(queries, dims, task, self.adapter)


def with_adapter(pool: AdaptablePool, adapter: str | None) -> AdaptablePool | AdapterView:
    """``pool`` itself for the base model (``adapter`` None), else its view through ``adapter``."""
    return pool if adapter is None else AdapterView(pool, adapter)
