"""The strategies :mod:`workers.bench.embedder_bench` times: each maps token-id documents to unit
vectors in input order."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from workers.batcher import MicroBatcher
from workers.bench.setup import Affixes, as_text
from workers.model.embedding_model import EmbeddingModel
from workers.model.pooling import pool
from workers.settings import BatchSettings

PEER = "sentence_transformers"
Strategy = Callable[[list[list[int]]], np.ndarray]


def _normalized(vectors: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(vectors.float(), dim=-1).cpu().numpy()


def padded_forward(model: EmbeddingModel, batch: Sequence[Sequence[int]]) -> np.ndarray:
    """A plain transformers forward of ``batch`` padded to its longest (no position ids, no packing)."""
    width = max(len(row) for row in batch)
    ids = torch.full((len(batch), width), model.tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, row in enumerate(batch):
        cols = slice(width - len(row), width) if model.padding_side == "left" else slice(0, len(row))
        ids[i, cols], mask[i, cols] = torch.tensor(row), 1
    ids, mask = ids.to(model.device), mask.to(model.device)
    with torch.inference_mode():
        hidden = model.module(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return _normalized(pool(hidden, mask, model.pooling))


def single_forward(model: EmbeddingModel, module: Any, document: Sequence[int]) -> np.ndarray:
    """``module`` (``model``'s network, maybe in another dtype) on ``document`` alone, pooled, normalized."""
    ids = torch.tensor([list(document)], device=model.device)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        hidden = module(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        return _normalized(pool(hidden, mask, model.pooling))[0]


def _ours(model: EmbeddingModel, budget: int) -> Strategy:
    settings = BatchSettings(max_batch_tokens=budget, max_queued_tokens=2**62)

    async def run(documents: list[list[int]]) -> np.ndarray:
        batcher = MicroBatcher(model.embed_ids, settings, packed=model.packed, launch_batch=model.launch_ids)
        try:
            requests = [documents[i : i + 8] for i in range(0, len(documents), 8)]
            results = await asyncio.gather(*(batcher.submit(r, (model.native_dim,)) for r in requests))
        finally:
            await batcher.close()
        return np.concatenate([result[model.native_dim] for result in results])

    return lambda documents: asyncio.run(run(documents))


def build_strategies(model: EmbeddingModel, peer: Any, affixes: Affixes, budget: int) -> dict[str, Strategy]:
    """``ours``, the sentence-transformers peer and ``hf_arrival`` (:mod:`workers.bench.embedder_bench`)."""

    def sentence_transformers(documents: list[list[int]]) -> np.ndarray:
        texts = [as_text(document, affixes) for document in documents]
        out: np.ndarray = peer.encode(
            texts, batch_size=32, normalize_embeddings=True, show_progress_bar=False
        )
        return out

    def hf_arrival(documents: list[list[int]]) -> np.ndarray:
        return np.concatenate(
            [padded_forward(model, documents[i : i + 32]) for i in range(0, len(documents), 32)]
        )

    return {"ours": _ours(model, budget), PEER: sentence_transformers, "hf_arrival": hf_arrival}


def peer_tokenize(peer: Any, affixes: Affixes) -> Callable[[list[list[int]]], float]:
    """Seconds the peer's tokenizer takes over the documents' texts."""

    def seconds(documents: list[list[int]]) -> float:
        texts = [as_text(document, affixes) for document in documents]
        started = time.perf_counter()
        peer.tokenize(texts)
        return time.perf_counter() - started

    return seconds
