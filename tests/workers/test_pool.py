"""EmbedderPool on local Ray: routing and retries against scripted actors, then the real tiny Qwen3."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytest_asyncio
import ray
from ray.exceptions import RayActorError

import workers.pool
from workers.errors import Backpressure, ConfigError, EmbedderUnavailable, PoisonTexts
from workers.model.embedding_model import EmbeddingModel, ModelInfo
from workers.model.inputs import ModelInput, TokenizedText, texts_of
from workers.pool import EmbedderPool
from workers.refusal_backoff import MAX_FACTOR, RefusalBackoff
from workers.settings import BatchSettings, ModelSettings, PoolSettings

pytestmark = pytest.mark.asyncio(loop_scope="module")

FAKE_INFO = ModelInfo(name="fake", native_dim=8, max_length=64, device="cpu", dtype="float32", pooling="mean")


class ScriptedEmbedder:
    """A stand-in embedder actor: row ``i`` is ``len(texts[i])`` repeated.

    It refuses the next ``refuse(n)`` calls (queries too) with Backpressure, hangs on the text "hang"
    (counting cancellations), takes a second over "slow", and exits its process on every call when
    built with ``die=True`` or given the text "poison".
    """

    def __init__(self, die: bool = False) -> None:
        self.die = die
        self.calls = self.refusals = self.cancelled = 0

    async def refuse(self, count: int) -> None:
        self.refusals = count

    async def embed(self, inputs: list[ModelInput], dims: tuple[int, ...]) -> dict[int, np.ndarray]:
        self.calls += 1
        texts = texts_of(inputs)
        if self.die or "poison" in texts:
            os._exit(1)
        if self.refusals:
            self.refusals -= 1
            raise Backpressure("queue full", retry_after=0.05)
        try:
            await asyncio.sleep(3600 if "hang" in texts else 1.0 if "slow" in texts else 0.02)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        lengths = np.array([len(text) for text in texts], dtype=np.float32)
        return {dim: np.repeat(lengths[:, None], dim, axis=1) for dim in dims}

    async def embed_queries(
        self, queries: list[str], dims: tuple[int, ...], task: str | None = None
    ) -> dict[int, np.ndarray]:
        return await self.embed(list(queries), dims)

    async def ready(self) -> ModelInfo:
        return FAKE_INFO

    async def counters(self) -> dict[str, int]:
        return {"calls": self.calls, "cancelled": self.cancelled}


class CapacityEmbedder:
    """A stand-in actor that holds at most ``capacity`` calls at once (each takes 20 ms) and refuses
    any more with Backpressure, as a full embedder queue does; rows as ScriptedEmbedder's."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.active = self.refusals = self.queries = self.most_queries = 0

    async def embed(self, inputs: list[ModelInput], dims: tuple[int, ...]) -> dict[int, np.ndarray]:
        if self.active >= self.capacity:
            self.refusals += 1
            raise Backpressure("queue full", retry_after=0.02)
        self.active += 1
        try:
            await asyncio.sleep(0.02)
        finally:
            self.active -= 1
        lengths = np.array([len(text) for text in texts_of(inputs)], dtype=np.float32)
        return {dim: np.repeat(lengths[:, None], dim, axis=1) for dim in dims}

    async def embed_queries(
        self, queries: list[str], dims: tuple[int, ...], task: str | None = None
    ) -> dict[int, np.ndarray]:
        """Queries have a lane of their own: never refused; the most at once is remembered."""
        self.queries += 1
        self.most_queries = max(self.most_queries, self.queries)
        try:
            await asyncio.sleep(0.05)
        finally:
            self.queries -= 1
        return {dim: np.ones((len(queries), dim), dtype=np.float32) for dim in dims}

    async def refused(self) -> int:
        return self.refusals

    async def queries_at_once(self) -> int:
        return self.most_queries


@pytest.fixture(scope="module")
def scripted_actor(ray_namespace: str) -> Any:
    """ScriptedEmbedder as a Ray actor class."""
    # Ray workers cannot import test modules: ship ScriptedEmbedder's code itself.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    return ray.remote(ScriptedEmbedder)


@pytest.fixture(scope="module")
def scripted(scripted_actor: Any) -> Iterator[list[Any]]:
    """Two answering actors and one that dies on its first call (and is never restarted)."""
    remote = scripted_actor.options(num_cpus=0, max_restarts=0)
    handles: list[Any] = [remote.remote(), remote.remote(), remote.remote(die=True)]
    yield handles
    for handle in handles:
        ray.kill(handle)


def scripted_pool(handles: list[Any], rng: random.Random | None = None, **settings: Any) -> EmbedderPool:
    return EmbedderPool(handles, FAKE_INFO, PoolSettings(**settings), rng=rng)


async def counters(handle: Any) -> dict[str, int]:
    result: dict[str, int] = await handle.counters.remote()
    return result


async def test_backpressure_is_waited_out_without_using_up_attempts(scripted: list[Any]) -> None:
    healthy = scripted[0]
    pool = scripted_pool([healthy], max_attempts=1)
    await healthy.refuse.remote(3)
    before = (await counters(healthy))["calls"]
    started = time.monotonic()
    out = await pool.embed(["abc", "de"], (8, 2))
    assert out[2].tolist() == [[3, 3], [2, 2]] and out[8].shape == (2, 8)
    assert (await counters(healthy))["calls"] - before == 4
    assert time.monotonic() - started >= 0.15  # three waits of retry_after


@pytest.fixture
def pool_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every ``asyncio.sleep`` of workers.pool, in order (it still sleeps)."""
    sleeps: list[float] = []
    sleep = asyncio.sleep

    class RecordingAsyncio:
        def __getattr__(self, name: str) -> Any:
            return getattr(asyncio, name)

        async def sleep(self, delay: float) -> None:
            sleeps.append(delay)
            await sleep(delay)

    monkeypatch.setattr(workers.pool, "asyncio", RecordingAsyncio())
    return sleeps


async def test_consecutive_refusals_of_a_request_back_off_with_jitter(
    scripted: list[Any], pool_sleeps: list[float]
) -> None:
    healthy, hint, refused = scripted[0], 0.05, 6
    pool = scripted_pool([healthy], rng=random.Random(11), max_attempts=1)
    await healthy.refuse.remote(refused)
    before = (await counters(healthy))["calls"]
    out = await pool.embed(["abc", "de"], (8, 2))
    assert out[2].tolist() == [[3, 3], [2, 2]]
    assert (await counters(healthy))["calls"] - before == refused + 1
    # The waits are the policy's, drawn from the pool's generator: the same seed gives the same ones.
    policy = RefusalBackoff(rng=random.Random(11))
    assert pool_sleeps == [policy.delay(hint, n) for n in range(1, refused + 1)]
    assert pool_sleeps[0] == hint  # an isolated refusal costs the hint, no more
    assert all(hint <= wait <= hint * min(2 ** (n - 1), MAX_FACTOR) for n, wait in enumerate(pool_sleeps, 1))
    assert max(pool_sleeps[3:]) > 2 * hint  # the window has grown past the second refusal's
    # Another seed spreads the same refusals differently: callers refused together come back apart.
    other = RefusalBackoff(rng=random.Random(12))
    assert pool_sleeps[1:] != [other.delay(hint, n) for n in range(2, refused + 1)]


async def test_a_query_waits_the_hint_exactly_and_gives_up_at_its_bound(
    scripted: list[Any], pool_sleeps: list[float]
) -> None:
    healthy = scripted[0]
    pool = scripted_pool([healthy], rng=random.Random(11), query_backpressure_s=0.18)
    await healthy.refuse.remote(3)
    out = await pool.embed_queries(["abc"], (8,))
    assert out[8][0, 0] == 3
    assert pool_sleeps == [0.05, 0.05, 0.05]  # no growth, no jitter
    pool_sleeps.clear()
    await healthy.refuse.remote(10)
    with pytest.raises(Backpressure, match=r"query_backpressure_s=0\.18"):
        await pool.embed_queries(["abc"], (8,))
    assert pool_sleeps == [0.05, 0.05, 0.05]  # a fourth wait would pass 0.18 s
    await healthy.refuse.remote(0)


async def test_a_dead_actor_is_retried_elsewhere_then_avoided(
    scripted: list[Any], caplog: pytest.LogCaptureFixture
) -> None:
    healthy, dying = scripted[1], scripted[2]
    pool = scripted_pool([dying, healthy], max_attempts=2)
    before = (await counters(healthy))["calls"]
    for _ in range(5):
        out = await pool.embed(["four"], (8,))
        assert out[8][0, 0] == 4
    assert (await counters(healthy))["calls"] - before == 5
    assert sum("embedder-0 failed" in record.getMessage() for record in caplog.records) == 1


async def test_a_lone_actor_restart_is_ridden_out(scripted_actor: Any) -> None:
    actor = scripted_actor.options(num_cpus=0, max_restarts=1).remote()
    pool = scripted_pool([actor], max_attempts=6)  # waits of 1+2+4+8+16 s: room for a slow restart
    try:
        assert (await pool.embed(["warm"], (8,)))[8][0, 0] == 4
        call = asyncio.create_task(pool.embed(["slow"], (8,)))
        await asyncio.sleep(0.3)
        ray.kill(actor, no_restart=False)
        assert (await call)[8][0, 0] == 4
    finally:
        ray.kill(actor)


async def test_attempts_are_bounded_when_no_actor_answers(scripted: list[Any]) -> None:
    pool = scripted_pool([scripted[2]], max_attempts=3)
    with pytest.raises(EmbedderUnavailable, match="3 tries") as failure:
        await pool.embed(["x"], (8,))
    assert isinstance(failure.value.__cause__, RayActorError)


async def test_an_unanswered_call_is_a_failed_try(scripted: list[Any]) -> None:
    pool = scripted_pool([scripted[0]], max_attempts=2, call_timeout_s=0.3, poison_after_crashes=5)
    started = time.monotonic()
    with pytest.raises(EmbedderUnavailable, match="2 tries"):
        await pool.embed(["hang"], (8,))
    assert time.monotonic() - started < 10


async def test_texts_that_kill_actors_are_isolated_and_the_rest_embeds(scripted_actor: Any) -> None:
    actor = scripted_actor.options(num_cpus=0, max_restarts=-1).remote()
    pool = scripted_pool([actor], max_attempts=3, poison_after_crashes=1)
    try:
        texts = ["a", "bb", "poison", "dddd", "eeeee", "poison", "g"]
        # Texts sent with their ids too: the poison is named by its text all the same.
        inputs = [TokenizedText(t, np.array([1], np.int32)) if i % 2 else t for i, t in enumerate(texts)]
        with pytest.raises(PoisonTexts) as caught:
            await pool.embed(inputs, (8,))
        assert caught.value.texts == ("poison", "poison")
        clean = [t for t in texts if t != "poison"]
        assert (await pool.embed(clean, (8,)))[8][:, 0].tolist() == [len(t) for t in clean]
    finally:
        ray.kill(actor)


async def test_concurrent_calls_spread_over_the_actors(scripted: list[Any]) -> None:
    pool = scripted_pool(scripted[:2])
    before = [(await counters(handle))["calls"] for handle in scripted[:2]]
    results = await asyncio.gather(*(pool.embed(["x" * n], (8,)) for n in range(1, 21)))
    assert [out[8][0, 0] for out in results] == list(range(1, 21))
    after = [(await counters(handle))["calls"] for handle in scripted[:2]]
    assert [b - a for a, b in zip(before, after, strict=True)] == [10, 10]


async def test_ingestion_calls_past_what_an_actor_holds_wait_in_the_pool(scripted_actor: Any) -> None:
    # scripted_actor registered this module for pickling by value: the actor class ships with it.
    actor = ray.remote(CapacityEmbedder).options(num_cpus=0).remote(capacity=4)
    pool = scripted_pool([actor], rng=random.Random(5))
    texts = [f"text {i:03d}" for i in range(64)]
    try:
        # The first wave meets an unlimited pool: 64 calls at once, at least 60 refused, and the
        # pool learns a limit from them.  Without one, the second wave would be refused as often.
        for _ in range(2):
            before = await actor.refused.remote()
            out = await asyncio.gather(*(pool.embed([text], (2,)) for text in texts))
            assert [int(vectors[2][0, 0]) for vectors in out] == [len(text) for text in texts]
            refused = await actor.refused.remote() - before
        [learnt] = pool.admission()
        assert learnt["limit"] is not None and 1 <= learnt["limit"] <= 8
        # What is left is the limit probing upwards: with room for 4, about one refusal every six
        # answers (6 to 8 a wave in 18 waves measured); at least 60 without the limit.
        assert refused <= 20, f"the second wave was refused {refused} times"
        # Queries are not held back by it: 16 at once reach the actor together.
        await asyncio.gather(*(pool.embed_queries([text], (2,)) for text in texts[:16]))
        assert await actor.queries_at_once.remote() == 16
    finally:
        ray.kill(actor)


async def test_a_cancelled_caller_cancels_its_ray_task(scripted: list[Any]) -> None:
    healthy = scripted[0]
    pool = scripted_pool([healthy])
    call = asyncio.create_task(pool.embed(["hang"], (8,)))
    await asyncio.sleep(0.5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    deadline = time.monotonic() + 10
    while (await counters(healthy))["cancelled"] == 0:
        assert time.monotonic() < deadline, "the actor's call was never cancelled"
        await asyncio.sleep(0.1)


async def test_dims_are_checked_before_any_call(scripted: list[Any]) -> None:
    pool = scripted_pool([scripted[2]])  # would fail with EmbedderUnavailable if it were called
    for dims in [(), (0,), (9,)]:
        with pytest.raises(ConfigError):
            await pool.embed(["x"], dims)


# --- the real pool with the tiny Qwen3 ---------------------------------------------------------

TEXTS = [
    "Streaming ingestion reads document events from Kafka.",
    "x",
    "Unicode matters too: café, naïve, Größe, 東京, Москва, and emoji 😀🚀 must round-trip.",
    " ".join(["Each embedder actor holds the model and batches texts by token budget."] * 8),
    "Qwen3 embedding models pool the hidden state of the last token.",
    "Numbers like 3.14159, 2718 and 42 appear in text.",
]
DIMS = (64, 32, 8)


@pytest.fixture(scope="module")
def qwen_settings(tiny_qwen3_path: Path) -> ModelSettings:
    return ModelSettings(name_or_path=str(tiny_qwen3_path))


@pytest.fixture(scope="module")
def reference(qwen_settings: ModelSettings) -> dict[str, dict[int, np.ndarray]]:
    """Every text embedded alone, in this process, by the model itself."""
    model = EmbeddingModel.load(qwen_settings, device="cpu")
    return {text: model.embed([text], DIMS) for text in TEXTS}


async def test_start_turns_a_model_that_cannot_load_into_a_config_error(
    ray_namespace: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="could not load the model"):
        await EmbedderPool.start(
            ModelSettings(name_or_path=str(tmp_path / "no-such-model")),
            BatchSettings(),
            PoolSettings(num_actors=1, cpus_per_actor=0.5, ready_timeout_s=120),
            namespace=ray_namespace,
        )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pool(ray_namespace: str, qwen_settings: ModelSettings) -> AsyncIterator[EmbedderPool]:
    started = await EmbedderPool.start(
        qwen_settings,
        BatchSettings(max_wait_ms=50, max_batch_tokens=2048),
        PoolSettings(num_actors=2, cpus_per_actor=0.5, ready_timeout_s=300),
        namespace=ray_namespace,
    )
    yield started
    started.shutdown()


def assert_matches(out: dict[int, np.ndarray], texts: list[str], reference: dict[str, Any]) -> None:
    assert set(out) == set(DIMS)
    for dim in DIMS:
        expected = np.concatenate([reference[text][dim] for text in texts])
        assert out[dim].shape == (len(texts), dim) and out[dim].dtype == np.float32
        cosines = (out[dim] * expected).sum(axis=1) / np.linalg.norm(out[dim], axis=1)
        assert cosines.min() >= 0.9999


async def test_pool_embeddings_equal_the_model_alone(
    pool: EmbedderPool, qwen_settings: ModelSettings, reference: dict[str, Any]
) -> None:
    assert pool.size == 2
    assert (pool.info.name, pool.info.native_dim, pool.info.pooling) == (
        qwen_settings.name_or_path,
        64,
        "last_token",
    )
    requests = [TEXTS[i:] + TEXTS[:i] for i in range(len(TEXTS))] * 4 + [[text] for text in TEXTS]
    results = await asyncio.gather(*(pool.embed(texts, DIMS) for texts in requests))
    for texts, out in zip(requests, results, strict=True):
        assert_matches(out, texts, reference)
    stats = await pool.stats()
    assert [entry["actor"] for entry in stats] == ["embedder-0", "embedder-1"]
    assert all(entry["batches"] > 0 for entry in stats)  # both actors served
    assert sum(entry["batches"] for entry in stats) < len(requests)  # requests shared forward passes


async def test_pool_refuses_dims_wider_than_the_model(pool: EmbedderPool) -> None:
    with pytest.raises(ConfigError):
        await pool.embed(["x"], (pool.info.native_dim + 1,))


async def test_a_second_pool_that_does_not_share_is_a_config_error(
    pool: EmbedderPool, qwen_settings: ModelSettings, ray_namespace: str
) -> None:
    with pytest.raises(ConfigError, match="already has embedder actors"):
        await EmbedderPool.start(
            qwen_settings,
            BatchSettings(),
            PoolSettings(num_actors=1, detached=False),
            namespace=ray_namespace,
        )


async def test_killing_an_actor_mid_stream_loses_nothing(
    pool: EmbedderPool, reference: dict[str, Any], ray_namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="workers.pool")
    pid_before = (await pool.stats())[0]["pid"]
    requests = [TEXTS[i % len(TEXTS) :] for i in range(60)]
    calls = [asyncio.create_task(pool.embed(texts, DIMS)) for texts in requests]
    await asyncio.sleep(0)  # every call is now submitted to an actor
    ray.kill(ray.get_actor("embedder-0", namespace=ray_namespace), no_restart=False)
    results = await asyncio.gather(*calls)
    for texts, out in zip(requests, results, strict=True):
        assert_matches(out, texts, reference)
    assert any("embedder-0 failed" in record.getMessage() for record in caplog.records)
    deadline = time.monotonic() + 120
    while "pid" not in (stats := await pool.stats())[0]:  # Ray restarts embedder-0 with a fresh model
        assert time.monotonic() < deadline, f"embedder-0 did not come back: {stats[0]}"
        await asyncio.sleep(0.5)
    assert stats[0]["pid"] != pid_before
    assert_matches(await pool.embed(TEXTS, DIMS), TEXTS, reference)
