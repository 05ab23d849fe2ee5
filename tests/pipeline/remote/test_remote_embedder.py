"""The remote embedder backend against an OpenAI-compatible test server that misbehaves on purpose
(tests/helpers/fake_embeddings.py): vectors cut and normalized here, requests cut by tokens, every
fault retried or typed, backpressure, refused texts isolated, the start's checks."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession
from helpers.app_server import serving
from helpers.fake_embeddings import FAULTS, OK, RETRY_AFTER_S, FakeEmbeddings, expected_vectors, vector_of

from pipeline.milvus.sink import MilvusSink
from pipeline.ops.processes import HOST, free_port
from pipeline.remote.client import EndpointUnavailable, MalformedAnswer
from pipeline.remote.embedder import RemoteEmbedder
from pipeline.remote.metrics import RemoteMetrics
from pipeline.remote.startup import check_remote_settings, start_remote_embedder
from pipeline.search.api import Api
from pipeline.settings import EmbedderSettings, MilvusSettings, Settings, load_settings
from workers.errors import Backpressure, ConfigError, EmbedderUnavailable, InputTooLong, PoisonTexts
from workers.model.embedding_model import ModelInfo
from workers.settings import ModelSettings

WIDTH = 64
DIMS = (64, 16)
TEXTS = [f"text number {i} " + "word " * (i % 5) for i in range(11)]


class WordTokenizer:
    """One token per word, plus one special token per text."""

    num_special_tokens = 1
    max_length = 40

    def count_tokens(self, text: str) -> int:
        return len(text.split())


def _remote(server: FakeEmbeddings, **options: Any) -> RemoteEmbedder:
    from pipeline.remote.client import EmbeddingsClient

    settings = EmbedderSettings(
        backend="openai",
        base_url=server.base_url,
        **({"request_timeout_s": 1.0, "backoff_base_s": 0.05, "backoff_max_s": 1.0} | options),
    )
    assert settings.base_url is not None
    client = EmbeddingsClient(settings.base_url, "m", settings.bearer(), settings.request_timeout_s)
    info = ModelInfo("m", WIDTH, WordTokenizer.max_length, "remote", "remote", "mean", "bert")
    return RemoteEmbedder(settings, ModelSettings(), client, WordTokenizer(), info, RemoteMetrics("t"))


def _assert_exact(got: dict[int, np.ndarray], texts: list[str]) -> None:
    want = expected_vectors(texts, WIDTH, DIMS)
    assert set(got) == set(DIMS)
    for dim in DIMS:
        np.testing.assert_allclose(got[dim], want[dim], atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(got[dim], axis=1), 1.0, atol=1e-5)


async def test_full_vectors_are_cut_then_normalized_here_never_asked_cut() -> None:
    async with FakeEmbeddings(WIDTH) as server:
        remote = _remote(server)
        got = await remote.embed(TEXTS, DIMS)
        await remote.aclose()
    _assert_exact(got, TEXTS)
    assert all("dimensions" not in body and body["model"] == "m" for body in server.bodies)
    # The server's vectors are far from unit length: only a cut-then-normalize here gives these rows.
    assert all(abs(np.linalg.norm(vector_of(t, WIDTH)) - 1.0) > 0.5 for t in TEXTS)


async def test_requests_hold_at_most_the_token_budget_and_the_count() -> None:
    async with FakeEmbeddings(WIDTH) as server:
        remote = _remote(server, max_request_inputs=3, max_request_tokens=12)
        got = await remote.embed(TEXTS, DIMS)
        await remote.aclose()
    _assert_exact(got, TEXTS)
    sent = [text for body in server.bodies for text in body["input"]]
    assert sorted(sent) == sorted(TEXTS)
    for body in server.bodies:
        tokens = sum(len(t.split()) + 1 for t in body["input"])
        assert len(body["input"]) <= 3 and (tokens <= 12 or len(body["input"]) == 1), body


async def test_a_text_longer_than_the_model_takes_is_refused_unsent() -> None:
    async with FakeEmbeddings(WIDTH) as server:
        remote = _remote(server)
        with pytest.raises(InputTooLong):
            await remote.embed(["short", "long " * 60], DIMS)
        await remote.aclose()
    assert server.bodies == []


@pytest.mark.parametrize("fault", FAULTS)
async def test_each_fault_is_ridden_out_and_the_vectors_are_exact(fault: str) -> None:
    async with FakeEmbeddings(WIDTH, lambda n: fault if n == 0 else OK, slow_s=2.5) as server:
        remote = _remote(server, request_timeout_s=0.5)
        got = await remote.embed(TEXTS, DIMS)
        await remote.aclose()
    _assert_exact(got, TEXTS)
    assert server.served[fault] == 1
    # A valid answer in another order is used as is (by index); any other fault costs one more try.
    assert len(server.bodies) == (1 if fault == "reversed" else 2)


@pytest.mark.parametrize("fault", ["throttle", "error503"])
async def test_retry_after_is_honoured(fault: str) -> None:
    async with FakeEmbeddings(WIDTH, lambda n: fault if n == 0 else OK) as server:
        remote = _remote(server, backoff_base_s=0.01)
        await remote.embed(TEXTS[:2], DIMS)
        await remote.aclose()
    assert server.arrivals[1] - server.arrivals[0] >= RETRY_AFTER_S * 0.95


@pytest.mark.parametrize(("fault", "cause"), [("error500", EndpointUnavailable), ("short", MalformedAnswer)])
async def test_after_max_attempts_a_retriable_error_from_the_last_failure(
    fault: str, cause: type[Exception]
) -> None:
    async with FakeEmbeddings(WIDTH, lambda n: fault) as server:
        remote = _remote(server, max_attempts=3)
        with pytest.raises(EmbedderUnavailable) as raised:
            await remote.embed(TEXTS[:2], DIMS)
        await remote.aclose()
    assert raised.value.retriable and isinstance(raised.value.__cause__, cause)
    assert len(server.bodies) == 3


async def test_a_full_client_raises_backpressure_with_retry_after_at_once() -> None:
    async with FakeEmbeddings(WIDTH, lambda n: "slow", slow_s=1.0) as server:
        remote = _remote(server, concurrent_requests=1, max_waiting_requests=1, request_timeout_s=5.0)
        first = asyncio.create_task(remote.embed(["a"], DIMS))
        second = asyncio.create_task(remote.embed(["b"], DIMS))
        while len(server.bodies) < 1:
            await asyncio.sleep(0.01)
        with pytest.raises(Backpressure) as raised:
            await remote.embed(["c"], DIMS)
        assert raised.value.retry_after > 0
        stats = (await remote.stats())[0]
        assert stats["inflight_requests"] == 1 and stats["waiting_requests"] == 1
        _assert_exact(await first, ["a"])
        _assert_exact(await second, ["b"])
        await remote.aclose()


async def test_texts_the_server_refuses_are_isolated_and_named() -> None:
    texts = [*TEXTS[:6], "bad one", *TEXTS[6:]]
    async with FakeEmbeddings(WIDTH, refuse=lambda t: t == "bad one") as server:
        remote = _remote(server)
        with pytest.raises(PoisonTexts) as raised:
            await remote.embed(texts, DIMS)
        got = await remote.embed(TEXTS, DIMS)  # the caller asks again without it
        await remote.aclose()
    assert list(raised.value.failed) == ["bad one"] and "400" in raised.value.failed["bad one"]
    assert raised.value.texts == ()
    _assert_exact(got, TEXTS)


def _settings(server_url: str, model: Path, **embedder: Any) -> Settings:
    return Settings(
        model=ModelSettings(name_or_path=str(model)),
        embedder=EmbedderSettings(backend="openai", base_url=server_url, **embedder),
        milvus=MilvusSettings(uri=f"http://{HOST}:{free_port()}"),  # nothing listens: never reached
    )


async def test_start_learns_the_width_and_checks_the_endpoint(minilm_path: Path) -> None:
    async with FakeEmbeddings(384, api_key="k", model=str(minilm_path)) as server:
        remote = await start_remote_embedder(_settings(server.base_url, minilm_path, api_key="k"))
        assert remote.info.native_dim == 384 and remote.info.model_type == "bert"
        assert remote.info.max_length == 256 and remote.info.pooling == "mean"
        await remote.aclose()
        with pytest.raises(ConfigError, match=r"401.*api_key"):
            await start_remote_embedder(_settings(server.base_url, minilm_path, api_key="wrong"))
        with pytest.raises(ConfigError, match=r"404.*model_name"):
            await start_remote_embedder(_settings(server.base_url, minilm_path, api_key="k", model_name="x"))
    async with FakeEmbeddings(WIDTH) as server:  # another model than MiniLM's 384 dimensions
        with pytest.raises(ConfigError, match=r"answers 64-dimensional vectors.* embeds in 384"):
            await start_remote_embedder(_settings(server.base_url, minilm_path))
    nobody = f"http://{HOST}:{free_port()}/v1"
    with pytest.raises(EmbedderUnavailable, match=f"{nobody}/embeddings did not answer.*start_timeout_s"):
        await start_remote_embedder(_settings(nobody, minilm_path, start_timeout_s=1.5))


def test_settings_refuse_what_the_backend_cannot_do() -> None:
    with pytest.raises(ConfigError, match="base_url"):
        load_settings(embedder={"backend": "openai"})
    remote = {"backend": "openai", "base_url": "http://127.0.0.1:1/v1"}
    check_remote_settings(load_settings(embedder=remote, scaling={"consumer_actors": 2}))  # fine
    with pytest.raises(ConfigError, match="autoscale"):
        check_remote_settings(load_settings(embedder=remote, scaling={"autoscale": True}))
    with pytest.raises(ConfigError, match="lora_path"):
        check_remote_settings(load_settings(embedder=remote, model={"lora_path": "/x"}))
    assert "secret" not in repr(load_settings(embedder=remote | {"api_key": "secret"}))


async def test_queries_are_formatted_here_as_the_actors_format_them(
    tiny_qwen3_path: Path, minilm_path: Path
) -> None:
    async with FakeEmbeddings(64) as server:  # the tiny Qwen3's width
        qwen = await start_remote_embedder(_settings(server.base_url, tiny_qwen3_path))
        await qwen.embed_queries(["what is it"], (64,), "Find passages")
        await qwen.aclose()
    async with FakeEmbeddings(384) as other:  # MiniLM's
        minilm = await start_remote_embedder(_settings(other.base_url, minilm_path))
        await minilm.embed_queries(["what is it"], (384,), "Find passages")
        await minilm.aclose()
    assert server.bodies[1]["input"] == ["Instruct: Find passages\nQuery:what is it"]
    assert other.bodies[1]["input"] == ["what is it"]  # bodies 0: the start's probes


async def test_the_api_embeds_through_the_remote_backend(minilm_path: Path) -> None:
    from workers.model.tokenizer import load_text_tokenizer

    async with FakeEmbeddings(384) as server:
        settings = _settings(server.base_url, minilm_path)
        remote = await start_remote_embedder(settings)
        sink = MilvusSink(settings.milvus, (384,))
        try:
            async with (
                serving(Api(settings, remote, load_text_tokenizer(settings.model), sink).app()) as served,
                ClientSession() as http,
            ):
                url = f"{served}/v1/embeddings"
                async with http.post(url, json={"input": TEXTS[:3], "dimensions": 16}) as response:
                    assert response.status == 200, await response.text()
                    body = await response.json()
        finally:
            await remote.aclose()
    got = np.array([item["embedding"] for item in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, expected_vectors(TEXTS[:3], 384, (16,))[16], atol=1e-6)
    assert all("dimensions" not in b for b in server.bodies)


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    from pipeline.remote.client import retry_after_of

    assert retry_after_of({"Retry-After": "2.5"}) == 2.5
    assert retry_after_of({"Retry-After": "Thu, 01 Jan 1970 00:01:40 GMT"}, now=90.0) == 10.0
    assert retry_after_of({"Retry-After": "soon"}) is None
    assert retry_after_of({}) is None


def test_the_api_key_never_travels_to_consumer_actors(monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    from pipeline.runtime.consumer_actors import with_node_secrets, without_secrets

    key = "remote-key-4711"
    settings = load_settings(embedder={"backend": "openai", "base_url": "http://h:1/v1", "api_key": key})
    shared, needed = without_secrets(settings)
    assert key.encode() not in pickle.dumps(shared) and needed == ("embedder.api_key",)
    for name in [n for n in os.environ if n.startswith("PIPELINE_")]:
        monkeypatch.delenv(name)
    with pytest.raises(ConfigError, match="PIPELINE_EMBEDDER__API_KEY"):
        with_node_secrets(shared, needed, "consumer-0")
    monkeypatch.setenv("PIPELINE_EMBEDDER__API_KEY", key)
    assert with_node_secrets(shared, needed, "consumer-0").embedder.bearer() == key
