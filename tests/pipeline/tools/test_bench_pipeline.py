"""`python -m pipeline bench --end-to-end` on the CPU: the workload it builds and one small run."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.ingest.consumer_stats import STAGES
from pipeline.settings import (
    BatchSettings,
    ChunkingSettings,
    ConsumerSettings,
    EmbedderSettings,
    KafkaSettings,
    MilvusSettings,
    ReplicaSettings,
    ScalingSettings,
    Settings,
)
from pipeline.tools.bench_bare import bare_inflight_tokens
from pipeline.tools.bench_documents import make_documents, one_token_words
from pipeline.tools.bench_members import sized_settings
from pipeline.tools.bench_pipeline import run_pipeline_bench
from workers.bench.setup import SHAPES, save_random_model
from workers.model.tokenizer import TextTokenizer, load_text_tokenizer
from workers.settings import ModelSettings, PoolSettings


@pytest.fixture(scope="module")
def tiny_random_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen3 shape saved the way the GPU run saves the 4B one."""
    return save_random_model(SHAPES["tiny"], tmp_path_factory.mktemp("tiny-random"), "cpu", torch.float32)


@pytest.fixture(scope="module")
def tokenizer(tiny_qwen3_path: Path) -> TextTokenizer:
    return load_text_tokenizer(ModelSettings(name_or_path=str(tiny_qwen3_path)))


def test_words_are_one_token_each_even_for_a_bpe_tokenizer(tokenizer: TextTokenizer) -> None:
    words = one_token_words(tokenizer, 50, seed=0)
    assert 0 < len(words) <= 50 and len(set(words)) == len(words)
    assert all(word.isalnum() and tokenizer.count_tokens(word) == 1 for word in words)


def test_documents_follow_the_bench_lengths_and_the_seed(tiny_random_path: Path) -> None:
    ids = load_text_tokenizer(ModelSettings(name_or_path=str(tiny_random_path)))
    texts = make_documents(ids, 400, seed=3, max_words=600)
    tokens = np.array([ids.count_tokens(text) for text in texts])
    # The id tokenizer reads every word as one token, so the token counts are the drawn lengths.
    assert tokens.min() >= 8 and tokens.max() <= 600
    assert 240 <= np.median(tokens) <= 360
    assert make_documents(ids, 400, seed=3, max_words=600) == texts
    assert make_documents(ids, 400, seed=4, max_words=600) != texts


def test_pipeline_and_bare_embedder_embed_the_same_tokens_and_every_row_lands(
    kafka_bootstrap: str, milvus_lite_uri: str, ray_session: None, tiny_random_path: Path
) -> None:
    settings = Settings(
        kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap),
        model=ModelSettings(name_or_path=str(tiny_random_path)),
        pool=PoolSettings(num_actors=1),
        replicas=ReplicaSettings(dims=(32, 8)),
        chunking=ChunkingSettings(max_tokens=128),  # the longer documents become several chunks
        milvus=MilvusSettings(uri=milvus_lite_uri, index_type="FLAT"),
        consumer=ConsumerSettings(commit_interval_s=0.3),
    )
    started = time.perf_counter()
    result = asyncio.run(
        run_pipeline_bench(settings, 60, seed=1, max_words=400, warmup_docs=4, min_seconds=3600)
    )
    wall = time.perf_counter() - started
    json.dumps(result)
    assert result["replicas"] == [64, 32, 8] and result["pool_actors"] == 1
    assert result["chunks"] > result["docs"] == 60
    assert result["pipeline"]["events"] == 60 and result["pipeline"]["dead_letters"] == 0
    assert result["pipeline"]["tokens_embedded"] == result["tokens"]
    assert result["pipeline"]["chunks_written"] == result["chunks"]
    assert result["rows_per_replica"] == {dim: result["chunks"] for dim in ("64", "32", "8")}
    assert result["complete"] is True and result["sustained"] is False
    assert result["embedder"]["tokens_per_s"] > 0 and result["pipeline"]["tokens_per_s"] > 0
    embedder, pipeline = result["embedder"], result["pipeline"]
    # The phases ran one after the other inside this call: real seconds, together within its wall time.
    assert embedder["seconds"] > 0 and pipeline["seconds"] > 0
    # The bare phase ran twice and reports its faster round.
    assert len(embedder["rounds_seconds"]) == 2 and embedder["seconds"] == min(embedder["rounds_seconds"])
    # Each round's actor counters: every round forwarded all of the workload's tokens, and says how
    # many requests a full queue refused.
    assert [round_["tokens"] for round_ in embedder["rounds_actors"]] == [result["tokens"]] * 2
    assert all(r["forward_seconds"] > 0 and "rejected_requests" in r for r in embedder["rounds_actors"])
    phases = ("produce_seconds", "warmup_seconds")
    assert sum(result[p] for p in phases) + sum(embedder["rounds_seconds"]) + pipeline["seconds"] < wall
    # Both phases embedded the same tokens (checked above), so the ratio of their rates is the
    # inverse ratio of their seconds.
    assert result["ratio_pipeline_vs_embedder"] == pytest.approx(embedder["seconds"] / pipeline["seconds"])
    # Where the pipeline phase's time went: every stage measured, every replica's writes, and the
    # actors' side of the same phase (they forwarded exactly the pipeline's tokens).
    where = result["breakdown"]
    assert set(where["consumer"]) == set(STAGES)
    assert all(figure["seconds"] > 0 for figure in where["consumer"].values())
    assert sorted(int(name.rsplit("_", 1)[1]) for name in where["replicas"]) == [8, 32, 64]
    assert all(f["seconds"] > 0 for f in where["replicas"].values())
    assert where["actors"]["tokens"] == result["tokens"] and where["actors"]["batches"] > 0
    assert where["actors"]["tokenize_seconds"] > 0 and 0 < where["actors"]["forward_busy"] < 1
    assert isinstance(where["actors"]["rejected_requests"], int)
    assert where["consumer"]["write"]["seconds"] >= max(f["seconds"] for f in where["replicas"].values())
    # The consumer threads' CPU time beside the wall time of the same work: positive, and never more
    # than that wall time (a thread's CPU time cannot outrun its clock).
    for work in ("build", "write"):
        figure = where["consumer_cpu"][work]
        assert 0 < figure["cpu_seconds"] <= figure["wall_seconds"] and 0 < figure["cpu_share"] <= 1


def test_consumer_actors_on_several_embedders_land_every_row_and_report_each_member(
    kafka_bootstrap: str, milvus_lite_uri: str, ray_session: None, tiny_random_path: Path
) -> None:
    """`bench --end-to-end --actors 2 --consumer-actors 2`: the pipeline phase runs as a consumer group."""
    settings = sized_settings(
        Settings(
            kafka=KafkaSettings(bootstrap_servers=kafka_bootstrap),
            model=ModelSettings(name_or_path=str(tiny_random_path)),
            pool=PoolSettings(cpus_per_actor=0.25),
            scaling=ScalingSettings(consumer_cpus=0.25),
            replicas=ReplicaSettings(dims=(8,)),
            chunking=ChunkingSettings(max_tokens=128),
            milvus=MilvusSettings(uri=milvus_lite_uri, index_type="FLAT"),
            consumer=ConsumerSettings(commit_interval_s=0.3, max_inflight_tokens=131072),
        ),
        actors=2,
        consumer_actors=2,
        partitions=None,
    )
    result = asyncio.run(run_pipeline_bench(settings, 40, seed=3, max_words=300, warmup_docs=4))
    assert (result["pool_actors"], result["consumer_actors"], result["partitions"]) == (2, 2, 4)
    # The pool fed directly had as many tokens in flight as the two consumers together.
    assert result["embedder_inflight_tokens"] == 2 * settings.consumer.max_inflight_tokens
    pipeline = result["pipeline"]
    assert pipeline["events"] == 40 and pipeline["tokens_embedded"] == result["tokens"]
    assert result["rows_per_replica"] == {dim: result["chunks"] for dim in ("64", "8")}
    assert result["complete"] is True
    members = pipeline["members"]
    assert len(members) == 2 and sum(m["events"] for m in members) == 40
    # The group's span covers every member's own busy time.
    assert pipeline["seconds"] >= max(m["busy_seconds"] for m in members) > 0


def test_the_bare_phase_keeps_in_flight_what_the_actors_hold_and_no_more() -> None:
    held = 262144 + 32 * 16384  # an actor's queue, and 32 held requests of 16,384 tokens

    def settings(budget: int, embedder: EmbedderSettings | None = None) -> Settings:
        return Settings(
            consumer=ConsumerSettings(max_inflight_tokens=budget, max_request_tokens=16384),
            batching=BatchSettings(max_queued_tokens=262144, max_pending_requests=32),
            embedder=embedder or EmbedderSettings(),
        )

    assert bare_inflight_tokens(settings(524288), members=0, actors=1) == 524288
    assert bare_inflight_tokens(settings(2097152), members=0, actors=1) == held
    assert bare_inflight_tokens(settings(2097152), members=0, actors=2) == 2 * held
    # Three consumer members on one actor: their budgets together, up to what that actor holds.
    assert bare_inflight_tokens(settings(131072), members=3, actors=1) == 3 * 131072
    assert bare_inflight_tokens(settings(524288), members=3, actors=1) == held
    # A remote endpoint's capacity is not known here: the consumers' budgets together.
    remote = EmbedderSettings(backend="openai", base_url="http://127.0.0.1:8000/v1")
    assert bare_inflight_tokens(settings(2097152, remote), members=0, actors=1) == 2097152
