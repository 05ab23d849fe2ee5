"""No request hangs: busy embedders are a 429, a stuck one a 503 at the deadline, a client that goes
away cancels its work — through the real EmbedderPool and Ray actors, with an HTTP client."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import numpy as np
import pytest
import ray
from helpers.app_server import serving

from pipeline.milvus.sink import MilvusSink
from pipeline.ops import processes
from pipeline.search.api import Api
from pipeline.settings import Settings
from workers.errors import Backpressure, FailedInputs
from workers.model.embedding_model import ModelInfo
from workers.pool import EmbedderPool
from workers.settings import PoolSettings

INFO = ModelInfo(name="busy", native_dim=4, max_length=64, device="cpu", dtype="float32", pooling="mean")


class BusyEmbedder:
    """An embedder actor whose queue is full (``full``: refuses every call with Backpressure) or whose
    work never ends (the query "hang"); it counts the calls cancelled while running."""

    def __init__(self) -> None:
        self.full = False
        self.calls = self.cancelled = 0

    async def set_full(self, full: bool) -> None:
        self.full = full

    async def embed_queries(self, texts: list[str], dims: tuple[int, ...], task: str | None) -> Any:
        self.calls += 1
        if self.full:
            raise Backpressure("queue full", retry_after=0.5)
        if "too big" in texts:  # what the actor raises for a text out of memory even alone
            raise FailedInputs({texts.index("too big"): "out of memory in the forward pass"})
        try:
            await asyncio.sleep(3600 if "hang" in texts else 0.01)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return {dim: np.ones((len(texts), dim), dtype=np.float32) / np.sqrt(dim) for dim in dims}

    async def counters(self) -> tuple[int, int]:
        return self.calls, self.cancelled


@pytest.fixture(scope="module")
def actor(ray_session: None) -> Iterator[Any]:
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests
    handle = ray.remote(BusyEmbedder).options(num_cpus=0, max_restarts=0).remote()
    yield handle
    ray.kill(handle)


@pytest.fixture
async def url(actor: Any) -> AsyncIterator[str]:
    await actor.set_full.remote(False)
    milvus = {"uri": f"http://127.0.0.1:{processes.free_port()}", "timeout_s": 2.0}  # never reached
    settings = Settings.model_validate(
        {"replicas": {"dims": [2]}, "milvus": milvus, "api": {"request_timeout_s": 3.0}}
    )
    pool = EmbedderPool([actor], INFO, PoolSettings(query_backpressure_s=2.0))
    sink = MilvusSink(settings.milvus, settings.replicas.replica_dims(INFO.native_dim))
    async with serving(Api(settings, pool, Tokens(), sink).runner()) as served:
        yield served


class Tokens:
    def encode(self, texts: list[str]) -> list[list[int]]:
        return [[0] * len(text.split()) for text in texts]


async def post(url: str, text: str) -> tuple[int, dict[str, Any], float, str | None]:
    started = time.monotonic()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/v1/embeddings", json={"input": text}) as response,
    ):
        body = await response.json()
        return response.status, body, time.monotonic() - started, response.headers.get("Retry-After")


async def test_an_answering_actor_answers(url: str) -> None:
    status, body, _, _ = await post(url, "hello")
    assert status == 200 and len(body["data"][0]["embedding"]) == INFO.native_dim


async def test_an_input_the_model_fails_on_alone_is_a_400_naming_why(url: str) -> None:
    status, body, _, retry_after = await asyncio.wait_for(post(url, "too big"), 20)
    assert status == 400 and body["error"]["code"] == "input_not_embeddable", body
    assert "out of memory in the forward pass" in body["error"]["message"] and retry_after is None


async def test_full_queues_are_a_429_with_retry_after_within_the_bound(url: str, actor: Any) -> None:
    await actor.set_full.remote(True)
    status, body, seconds, retry_after = await asyncio.wait_for(post(url, "hello"), 20)
    assert status == 429 and body["error"]["code"] == "rate_limit_exceeded", body
    assert "pool.query_backpressure_s=2" in body["error"]["message"]
    assert retry_after == "1"  # the actor's 0.5 s, rounded up to HTTP's whole seconds
    assert 1.4 <= seconds < 3.0  # waited out ~2 s of refusals, answered before the request deadline


async def test_a_stuck_actor_is_a_503_at_the_deadline_and_its_task_is_cancelled(url: str, actor: Any) -> None:
    _, cancelled_before = await actor.counters.remote()
    status, body, seconds, retry_after = await asyncio.wait_for(post(url, "hang"), 20)
    assert status == 503 and body["error"]["code"] == "timeout", body
    assert retry_after is not None and 2.9 <= seconds < 6.0
    await until(lambda: actor.counters.remote(), lambda c: c[1] == cancelled_before + 1)


async def test_a_client_that_disconnects_cancels_its_work_on_the_actor(url: str, actor: Any) -> None:
    calls_before, cancelled_before = await actor.counters.remote()
    request = asyncio.ensure_future(post(url, "hang"))
    await until(lambda: actor.counters.remote(), lambda c: c[0] == calls_before + 1)
    request.cancel()  # the client closes its connection: nobody will read the answer
    with pytest.raises(asyncio.CancelledError):
        await request
    # Well before the request's own 3 s deadline, the actor's task was cancelled.
    await until(lambda: actor.counters.remote(), lambda c: c[1] == cancelled_before + 1, timeout_s=2.0)


async def until(read: Any, done: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not done(value := await read()):
        assert time.monotonic() < deadline, f"still {value} after {timeout_s}s"
        await asyncio.sleep(0.05)
