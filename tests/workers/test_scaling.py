"""PoolScaler on the session's Ray with the tiny Qwen3: grow, route to the new actor, shrink without losing
the calls in flight on the retired one."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import ray

from workers.errors import ConfigError
from workers.pool import EmbedderPool
from workers.scaling import PoolScaler
from workers.settings import BatchSettings, ModelSettings, PoolSettings

pytestmark = pytest.mark.timeout(300)


async def test_grows_routes_and_shrinks_without_losing_calls(
    tiny_qwen3_path: Path, ray_namespace: str
) -> None:
    model = ModelSettings(name_or_path=str(tiny_qwen3_path))
    # A long wait lets calls pile up in the actors, so the retired one has calls in flight.
    batching = BatchSettings(max_wait_ms=300)
    settings = PoolSettings(num_actors=1, cpus_per_actor=0.5)
    pool = await EmbedderPool.start(model, batching, settings, namespace=ray_namespace)
    added: list[int] = []
    retired: list[int] = []

    async def on_added(index: int, _: object) -> None:
        added.append(index)

    async def on_retiring(index: int) -> None:
        retired.append(index)

    scaler = PoolScaler(
        pool, model, batching, settings, ray_namespace, added=[on_added], retiring=[on_retiring]
    )
    try:
        await scaler.scale_to(2)
        assert pool.size == 2 and added == [1]
        dims = (pool.info.native_dim,)
        calls = [asyncio.create_task(pool.embed([f"text {i}"] * 4, dims)) for i in range(8)]
        for _ in range(100):  # until embedder-1 holds some of them (tokenized, waiting for a batch)
            stats = {s["actor"]: s for s in await pool.stats()}
            if stats["embedder-1"]["queued_texts"] or all(c.done() for c in calls):
                break
            await asyncio.sleep(0.01)
        await scaler.scale_to(1)  # retires embedder-1 after its calls finished
        results = await asyncio.gather(*calls)
        assert all(r[dims[0]].shape == (4, dims[0]) for r in results)
        assert pool.size == 1 and retired == [1]
        assert stats["embedder-1"]["queued_texts"] > 0  # it had work when it was retired
        for _ in range(100):  # killed once drained (the name is released shortly after)
            try:
                ray.get_actor("embedder-1", namespace=ray_namespace)
            except ValueError:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("embedder-1 still exists")
        with pytest.raises(ConfigError):
            await scaler.scale_to(0)
        # Growing again reuses the free index.
        await scaler.scale_to(2)
        assert added == [1, 1] and pool.size == 2
        assert (await pool.embed(["again"], dims))[dims[0]].shape == (1, dims[0])
    finally:
        pool.shutdown()
