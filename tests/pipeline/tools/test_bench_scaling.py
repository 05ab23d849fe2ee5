"""`python -m pipeline bench --scaling` on the CPU: the same workload through pools of 1 and 2 actors."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
import torch

from pipeline.settings import ChunkingSettings, ReplicaSettings, Settings
from pipeline.tools.bench_scaling import _parser, run_scaling_bench
from workers.bench.setup import SHAPES, save_random_model
from workers.settings import ModelSettings, PoolSettings


@pytest.fixture(scope="module")
def tiny_random_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_model(SHAPES["tiny"], tmp_path_factory.mktemp("tiny-random"), "cpu", torch.float32)


def test_actor_counts_are_parsed_and_checked() -> None:
    assert _parser().parse_args(["--scaling", "1,2,4"]).scaling == [1, 2, 4]
    for bad in ("0,1", "one", ""):
        with pytest.raises(SystemExit):
            _parser().parse_args(["--scaling", bad])


def test_every_actor_count_embeds_the_same_chunks_on_that_many_actors(
    ray_session: None, tiny_random_path: Path
) -> None:
    settings = Settings(
        model=ModelSettings(name_or_path=str(tiny_random_path)),
        # Half a CPU each, so that two actors fit the 2-core CI machine beside the driver.
        pool=PoolSettings(cpus_per_actor=0.5),
        replicas=ReplicaSettings(dims=(8,)),
        chunking=ChunkingSettings(max_tokens=128),
    )
    started = time.perf_counter()
    result = asyncio.run(run_scaling_bench(settings, [1, 2], 40, seed=2, max_words=300, warmup_docs=4))
    wall = time.perf_counter() - started
    json.dumps(result)
    one, two = result["runs"]
    assert (one["actors"], two["actors"]) == (1, 2)
    assert one["tokens"] == two["tokens"] > 0 and one["chunks"] == two["chunks"] > 40
    assert one["replicas"] == two["replicas"] == [64, 8]
    assert two["max_inflight_tokens"] == 2 * one["max_inflight_tokens"]
    # Both actors of the second pool took part.
    assert [actor["actor"] for actor in two["per_actor"]] == ["embedder-0", "embedder-1"]
    assert all(actor["texts"] > 0 for actor in two["per_actor"])
    # The timed phases are real seconds: positive, and inside the wall time of the whole call.
    assert all(run["seconds"] > 0 for run in (one, two))
    assert sum(run["start_seconds"] + run["seconds"] for run in (one, two)) < wall
    # The actors' own counters hold every timed chunk and token (and those of the warm-up and the
    # checked requests, sent to the same pool before the clock started).
    for run in (one, two):
        assert sum(actor["texts"] for actor in run["per_actor"]) > run["chunks"]
        assert sum(actor["tokens"] for actor in run["per_actor"]) > run["tokens"]
    # Speed-up and efficiency from the tokens and seconds each run reports, not from its rates.
    speedup = (two["tokens"] / two["seconds"]) / (one["tokens"] / one["seconds"])
    assert two["speedup_vs_first"] == pytest.approx(speedup)
    assert two["per_actor_efficiency"] == pytest.approx(speedup / 2)
