"""Two LoRA adapters in one embedder actor on local Ray: each request gets its own adapter's vectors
(equal to the model with that adapter merged), also when requests of both and of the base model are
queued together; an unknown adapter is refused before anything is sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from helpers.models import write_lora_adapter

from workers.errors import UnknownAdapter
from workers.model.embedding_model import EmbeddingModel
from workers.pool import EmbedderPool
from workers.settings import BatchSettings, ModelSettings, PoolSettings

pytest.importorskip("peft")

TEXTS = ["hello world", "a longer text about streaming embeddings into replicas", "x", "legal terms apply"]
DIMS = (64, 16)
NAMES = ("legal", "medical")


@pytest.fixture(scope="module")
def adapters(tiny_qwen3_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("pool-adapters")
    return {
        name: str(write_lora_adapter(tiny_qwen3_path, root / name, seed=20 + i))
        for i, name in enumerate(NAMES)
    }


@pytest.fixture(scope="module")
def references(tiny_qwen3_path: Path, adapters: dict[str, str]) -> dict[str | None, dict[int, np.ndarray]]:
    """Each text embedded in this process by the base model and by the model with each adapter merged."""

    def merged(lora: str | None) -> dict[int, np.ndarray]:
        settings = ModelSettings(name_or_path=str(tiny_qwen3_path), dtype="float32", lora_path=lora)
        return EmbeddingModel.load(settings, device="cpu").embed(TEXTS, DIMS)

    return {None: merged(None), **{name: merged(adapters[name]) for name in NAMES}}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(
    ray_namespace: str, tiny_qwen3_path: Path, adapters: dict[str, str]
) -> AsyncIterator[EmbedderPool]:
    model = ModelSettings(
        name_or_path=str(tiny_qwen3_path), dtype="float32", adapters=adapters, adapter="legal"
    )
    started = await EmbedderPool.start(
        model,
        BatchSettings(max_wait_ms=50, max_batch_tokens=2048),
        PoolSettings(num_actors=1, cpus_per_actor=0.5, ready_timeout_s=300, detached=False),
        namespace=ray_namespace,
    )
    yield started
    started.shutdown()


@pytest.mark.asyncio(loop_scope="module")
async def test_requests_of_two_adapters_and_the_base_in_one_actor_each_get_their_own_vectors(
    pool: EmbedderPool, references: dict[str | None, dict[int, np.ndarray]], adapters: dict[str, str]
) -> None:
    assert pool.size == 1
    assert sorted(pool.info.adapters) == sorted(NAMES)
    # The actors load the adapters; which one a pipeline uses is not part of what they load.
    assert pool.info.adapters["legal"].startswith(adapters["legal"] + "@")
    plan: list[str | None] = [None, "legal", "medical"] * 4
    results = await asyncio.gather(
        *(pool.embed(TEXTS, DIMS, adapter) for adapter in plan[:6]),
        *(pool.embed_queries(TEXTS, DIMS, None, adapter) for adapter in plan[6:]),
    )
    for adapter, out in zip(plan, results, strict=True):
        for dim in DIMS:
            cosines = (out[dim] * references[adapter][dim]).sum(axis=1)
            assert cosines.min() >= 0.9999, (adapter, dim, cosines)
    # The three really are three vector spaces.
    assert np.abs(references["legal"][64] - references["medical"][64]).max() > 1e-2
    assert np.abs(references["legal"][64] - references[None][64]).max() > 1e-2


@pytest.mark.asyncio(loop_scope="module")
async def test_an_unknown_adapter_is_refused_by_name(pool: EmbedderPool) -> None:
    with pytest.raises(UnknownAdapter, match="'nope'"):
        await pool.embed(TEXTS, DIMS, "nope")
    with pytest.raises(UnknownAdapter, match="'nope'"):
        await pool.embed_queries(TEXTS, DIMS, None, "nope")
