"""RerankerPool on the session's real Ray cluster with the tiny cross-encoder: scores equal the model's
in-process scores whatever the split across actors, a killed actor is ridden out by Ray's restart,
full queues become Backpressure within the bound, a too-long pair comes back as InputTooLong."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
import ray

from workers.errors import Backpressure, InputTooLong
from workers.model.reranker_model import RerankerModel
from workers.reranker_actor import RerankerActor
from workers.reranker_pool import RerankerPool
from workers.reranker_settings import RerankerSettings

pytestmark = pytest.mark.asyncio(loop_scope="module")

QUERY = "how do volcanoes form"
DOCUMENTS = [f"document {i}: " + "magma rises through the crust " * (i % 5) for i in range(20)]


def _settings(folder: Path, **overrides: object) -> RerankerSettings:
    values: dict[str, object] = {"name_or_path": str(folder), "num_actors": 2, "cpus_per_actor": 0.5}
    return RerankerSettings.model_validate(values | overrides)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pool(ray_namespace: str, tiny_cross_encoder_path: Path) -> AsyncIterator[RerankerPool]:
    started = await RerankerPool.start(_settings(tiny_cross_encoder_path), namespace=ray_namespace)
    try:
        yield started
    finally:
        started.shutdown()


async def test_pool_scores_equal_the_models_own_in_input_order(
    pool: RerankerPool, tiny_cross_encoder_path: Path
) -> None:
    local = RerankerModel.load(RerankerSettings(name_or_path=str(tiny_cross_encoder_path)), "cpu")
    expected = local.score(QUERY, DOCUMENTS)
    scores = await pool.score(QUERY, DOCUMENTS)
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)
    # Concurrent calls share batches and still get their own scores back.
    many = await asyncio.gather(*(pool.score(QUERY, DOCUMENTS[i : i + 3]) for i in range(0, 18, 3)))
    np.testing.assert_allclose(np.concatenate(many), expected[:18], rtol=0, atol=1e-5)
    assert await pool.score(QUERY, []) == []
    stats = await pool.stats()
    assert sum(s["batches"] for s in stats) >= 2 and all(s["texts"] >= 1 for s in stats)


async def test_a_too_long_pair_is_refused_as_input_too_long_naming_the_document(pool: RerankerPool) -> None:
    with pytest.raises(InputTooLong) as refused:
        await pool.score(QUERY, ["short", "word " * 600])
    assert refused.value.index == 1
    # Split across both actors, the index still counts in the call's documents.
    documents = [*DOCUMENTS[:15], "word " * 600, *DOCUMENTS[16:]]
    with pytest.raises(InputTooLong) as refused:
        await pool.score(QUERY, documents)
    assert refused.value.index == 15


async def test_a_killed_reranker_actor_is_restarted_and_the_call_answers(
    pool: RerankerPool, tiny_cross_encoder_path: Path
) -> None:
    expected = await pool.score(QUERY, DOCUMENTS[:4])
    victim = pool.handles[0]
    pid = (await victim.stats.remote())["pid"]
    calls = [asyncio.create_task(pool.score(QUERY, DOCUMENTS[:4])) for _ in range(4)]
    ray.kill(victim, no_restart=False)  # Ray restarts it (max_restarts=-1)
    for scores in await asyncio.gather(*calls):
        np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-5)
    for _ in range(120):  # the restarted process answers again, a new one
        try:
            if (await victim.stats.remote())["pid"] != pid:
                break
        except ray.exceptions.RayActorError:
            pass
        await asyncio.sleep(0.5)
    else:
        pytest.fail("the killed reranker actor was not restarted")
    np.testing.assert_allclose(await pool.score(QUERY, DOCUMENTS[:4]), expected, rtol=0, atol=1e-5)


class BusyReranker(RerankerActor):
    """Refuses every call as a full queue would."""

    async def score(self, query: str, documents: list[str], instruction: str | None = None) -> np.ndarray:
        raise Backpressure("queue full", retry_after=0.2)


async def test_full_queues_become_backpressure_within_the_bound(
    ray_namespace: str, tiny_cross_encoder_path: Path
) -> None:
    settings = _settings(tiny_cross_encoder_path, num_actors=1, backpressure_s=1.0)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests
    busy = await RerankerPool.start(settings, namespace=ray_namespace, actor_class=BusyReranker)
    try:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(Backpressure, match="backpressure_s=1"):
            await busy.score(QUERY, DOCUMENTS[:2])
        assert 0.8 <= loop.time() - started < 5
    finally:
        busy.shutdown()
