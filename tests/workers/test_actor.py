"""EmbedderActor on local Ray with the packaged MiniLM: same vectors as the model itself, dims checked."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray

from workers import actor as actor_module
from workers.actor import EmbedderActor, validate_dims
from workers.errors import ConfigError, InputTooLong, InvalidTokenIds
from workers.model.embedding_model import EmbeddingModel
from workers.model.inputs import TokenizedText
from workers.settings import BatchSettings, ModelSettings

TEXTS = [
    "Hello world.",
    "Streaming ingestion reads document events from Kafka and writes embeddings to Milvus.",
    "Unicode: café, naïve, Größe, 東京, Москва, emoji 😀🚀.",
    # Near MiniLM's 256-token limit (about 205 tokens): long, but not refused.
    " ".join(["Matryoshka embeddings stay meaningful when cut to their first dimensions."] * 12),
    "x",
]


@pytest.fixture(scope="module")
def settings(minilm_path: Path) -> ModelSettings:
    return ModelSettings(name_or_path=str(minilm_path))


@pytest.fixture(scope="module")
def actor(ray_namespace: str, settings: ModelSettings) -> Iterator[Any]:
    handle: Any = (
        ray.remote(EmbedderActor)
        .options(name="embedder-test", namespace=ray_namespace, num_cpus=0.5, max_concurrency=64)
        .remote(settings, BatchSettings(max_wait_ms=100), 0)
    )
    yield handle
    ray.kill(handle)


@pytest.fixture(scope="module")
def direct(settings: ModelSettings) -> EmbeddingModel:
    return EmbeddingModel.load(settings, device="cpu")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


async def test_concurrent_calls_match_the_model_one_text_at_a_time(
    actor: Any, direct: EmbeddingModel
) -> None:
    info = await actor.ready.remote()
    assert info == direct.info()  # same name, dim, dtype, pooling; cpu: Ray gave it no GPU
    dims = (info.native_dim, 128, 32)
    # Every text alone and in a mix of concurrent requests that the actor batches together.
    requests = [[text] for text in TEXTS] + [TEXTS, TEXTS[::-1]]
    results = await asyncio.gather(*(actor.embed.remote(texts, dims) for texts in requests))
    for texts, out in zip(requests, results, strict=True):
        assert set(out) == set(dims)
        for dim in dims:
            expected = np.concatenate([direct.embed([text], [dim])[dim] for text in texts])
            assert out[dim].shape == (len(texts), dim) and out[dim].dtype == np.float32
            assert cosines(out[dim], expected).min() >= 0.9999
            np.testing.assert_allclose(np.linalg.norm(out[dim], axis=1), 1.0, atol=1e-5)
    stats = await actor.stats.remote()
    assert stats["actor"] == "embedder-0" and stats["device"] == "cpu"
    assert stats["texts"] == 3 * len(TEXTS)
    assert stats["batches"] < len(requests)  # concurrent requests shared forward passes


async def test_dims_outside_the_model_are_a_config_error(actor: Any) -> None:
    info = await actor.ready.remote()
    for dims in [(), (0,), (info.native_dim + 1,), (64, -3)]:
        with pytest.raises(ConfigError):
            await actor.embed.remote(["hello"], dims)
    out = await actor.embed.remote(["still serving"], (info.native_dim,))
    assert out[info.native_dim].shape == (1, info.native_dim)


async def test_a_text_over_the_limit_is_refused_and_the_actor_keeps_serving(actor: Any) -> None:
    info = await actor.ready.remote()
    too_long = " ".join(["Matryoshka embeddings stay meaningful."] * 60)
    with pytest.raises(InputTooLong) as refused:
        await actor.embed.remote(["fine", too_long], (info.native_dim,))
    assert refused.value.index == 1 and refused.value.tokens > refused.value.limit == 256
    out = await actor.embed.remote(["still serving"], (info.native_dim,))
    assert out[info.native_dim].shape == (1, info.native_dim)


async def test_texts_sent_with_their_ids_embed_bit_for_bit_as_the_texts(
    actor: Any, direct: EmbeddingModel
) -> None:
    info = await actor.ready.remote()
    dims = (info.native_dim, 32)
    ids = direct.tokenizer.token_ids_batch(TEXTS)
    tokenized = [TokenizedText(text, row) for text, row in zip(TEXTS, ids, strict=True)]
    from_texts = await actor.embed.remote(TEXTS, dims)
    from_ids = await actor.embed.remote(tokenized, dims)
    for dim in dims:
        np.testing.assert_array_equal(from_ids[dim], from_texts[dim])
    bad = TokenizedText("not this model's", np.array([1, direct.tokenizer.vocabulary_size], dtype=np.int32))
    with pytest.raises(InvalidTokenIds) as refused:
        await actor.embed.remote(["fine", bad], dims)
    assert refused.value.index == 1
    out = await actor.embed.remote(tokenized[:1], dims)  # still serving
    assert out[32].shape == (1, 32)


def test_validate_dims() -> None:
    assert validate_dims((384, 64, 1), 384) == (384, 64, 1)
    for bad in [(), (385,), (0,), (True,), (64.0,)]:
        with pytest.raises(ConfigError):
            validate_dims(bad, 384)  # type: ignore[arg-type]


async def test_the_actor_logs_its_model_and_throughput(
    settings: ModelSettings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(actor_module, "_LOG_EVERY_S", 0.0)
    caplog.set_level(logging.INFO, logger="workers.actor")
    local = EmbedderActor(settings, BatchSettings(), 7)  # in this process: the class needs no Ray
    out = await local.embed(["hello", "world"], (384,))
    assert out[384].shape == (2, 384)
    messages = [record.getMessage() for record in caplog.records]
    loaded = next(message for message in messages if "embedder-7 loaded" in message)
    assert all(part in loaded for part in ("device=cpu", "dtype=float32", "pooling=mean", "dim=384"))
    assert any(message.startswith("embedder-7: ") and "tokens/s" in message for message in messages)


async def test_queries_are_formatted_for_the_model_and_ride_the_query_lane(
    settings: ModelSettings, tiny_qwen3_path: Path
) -> None:
    qwen3 = EmbedderActor(ModelSettings(name_or_path=str(tiny_qwen3_path)), BatchSettings(), 0)
    minilm = EmbedderActor(settings, BatchSettings(), 1)
    query, task = "how do I list files", "Given a question, retrieve man pages"
    for local, expected_text in (
        (qwen3, f"Instruct: {task}\nQuery:{query}"),  # Qwen3-Embedding's query format
        (minilm, query),  # a model trained without instructions gets the raw query
    ):
        dim = (await local.ready()).native_dim
        got = (await local.embed_queries([query], (dim,), task))[dim]
        expected = (await local.embed([expected_text], (dim,)))[dim]
        np.testing.assert_allclose(got, expected, atol=1e-5)
        assert (await local.stats())["texts"] == 2
