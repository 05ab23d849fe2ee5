"""Shared (detached) embedder actors on real Ray: they outlive a crashed driver, a restarted worker
joins them instead of loading the model again, another model is refused, `serve` follows them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray
from helpers.services import RayCluster

from pipeline.runtime.embedders import stop_embedders
from pipeline.settings import Settings
from workers.errors import ConfigError
from workers.pool import EmbedderPool
from workers.settings import BatchSettings, ModelSettings, PoolSettings
from workers.sharing import follow_embedders
from workers.spawn import list_embedders, spawn_embedder

pytestmark = pytest.mark.asyncio(loop_scope="module")

SHARED = PoolSettings(num_actors=1, cpus_per_actor=0.5, ready_timeout_s=300, detached=True)

# A worker's driver as its own process: it starts the shared pool, says so, then waits to be killed.
DRIVER = textwrap.dedent(
    """
    import asyncio, sys
    import ray
    from workers.pool import EmbedderPool
    from workers.settings import BatchSettings, ModelSettings, PoolSettings

    async def main() -> None:
        ray.init(address=sys.argv[1], namespace=sys.argv[2], log_to_driver=False)
        pool = await EmbedderPool.start(
            ModelSettings(name_or_path=sys.argv[3]), BatchSettings(),
            PoolSettings.model_validate_json(sys.argv[4]), namespace=sys.argv[2],
        )
        print("READY", (await pool.stats())[0]["pid"], flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


@pytest.fixture(scope="module")
def namespace(ray_namespace: str) -> Iterator[str]:
    yield ray_namespace
    for name in list_embedders(ray_namespace).values():  # detached: nothing else would stop them
        ray.kill(ray.get_actor(name, namespace=ray_namespace), no_restart=True)


@pytest.fixture(scope="module")
def model(tiny_qwen3_path: Path) -> ModelSettings:
    return ModelSettings(name_or_path=str(tiny_qwen3_path))


def run_driver(cluster: RayCluster, namespace: str, model: ModelSettings, tmp: Path) -> tuple[int, int]:
    """Start the driver process; (its pid, the pid of the actor it started) once the pool is ready."""
    env = {**os.environ, **cluster.env, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("RAY_AUTH_TOKEN", None)  # the cluster's token file wins only without it
    log = (tmp / "driver.log").open("w+")
    args = [cluster.address, namespace, model.name_or_path, SHARED.model_dump_json()]
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, *args], stdout=subprocess.PIPE, stderr=log, env=env
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if not line.startswith("READY"):
        proc.kill()
        log.seek(0)
        raise AssertionError(f"driver failed: {line!r}\n{log.read()[-3000:]}")
    return proc.pid, int(line.split()[1])


async def test_actors_outlive_a_crashed_driver_and_a_restarted_worker_joins_them(
    ray_cluster: RayCluster, namespace: str, model: ModelSettings, tmp_path: Path
) -> None:
    driver, actor_pid = run_driver(ray_cluster, namespace, model, tmp_path)
    os.kill(driver, signal.SIGKILL)  # the worker crashes
    await asyncio.sleep(5)  # long enough for Ray to reap a non-detached actor of a dead owner
    started = time.monotonic()
    joined = await EmbedderPool.start(model, BatchSettings(), SHARED, namespace=namespace)
    join_s = time.monotonic() - started
    stats = (await joined.stats())[0]
    assert stats["pid"] == actor_pid  # the same process: the model was not loaded again
    assert stats["load_s"] > 0  # what a restart would have paid, reported by the actor
    out = await joined.embed(["still here"], (joined.info.native_dim,))
    assert out[joined.info.native_dim].shape == (1, joined.info.native_dim)
    assert join_s < 30, join_s
    joined.release()  # detached: releasing leaves it for the next worker
    again = await EmbedderPool.start(model, BatchSettings(), SHARED, namespace=namespace)
    assert (await again.stats())[0]["pid"] == actor_pid


async def test_a_worker_configured_for_another_model_is_refused_and_kills_nothing(
    namespace: str, model: ModelSettings, minilm_path: Path
) -> None:
    before = await EmbedderPool.start(model, BatchSettings(), SHARED, namespace=namespace)
    pid = (await before.stats())[0]["pid"]
    other = ModelSettings(name_or_path=str(minilm_path))
    with pytest.raises(ConfigError, match="stop-embedders") as refused:
        await EmbedderPool.start(other, BatchSettings(), SHARED, namespace=namespace)
    assert "name_or_path" in str(refused.value)
    assert (await before.stats())[0]["pid"] == pid  # still the same, still answering


async def test_serve_follows_actors_that_appear_and_go(namespace: str, model: ModelSettings) -> None:
    pool = await EmbedderPool.attach(SHARED, namespace)
    assert pool is not None and pool.indices == [0]
    following = asyncio.create_task(follow_embedders(pool, namespace, interval_s=0.5))
    try:
        second = spawn_embedder(model, BatchSettings(), SHARED, 1, namespace, gpus=False)
        await until(lambda: pool.indices == [0, 1], "embedder-1 joined")
        out = await asyncio.gather(*(pool.embed([f"text {i}"], (16,)) for i in range(8)))
        assert all(o[16].shape == (1, 16) for o in out)
        ray.kill(second, no_restart=True)  # scaled down, or its node left
        await until(lambda: pool.indices == [0], "embedder-1 dropped")
        assert not following.done()
    finally:
        following.cancel()


async def test_stop_embedders_stops_the_shared_actors(namespace: str, model: ModelSettings) -> None:
    await EmbedderPool.start(model, BatchSettings(), SHARED, namespace=namespace)
    settings = Settings.model_validate({"ray": {"namespace": namespace}})
    assert stop_embedders(settings) == ["embedder-0"]
    await until(lambda: not list_embedders(namespace), "the names released")


async def until(check: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s}s: {what}"
        await asyncio.sleep(0.2)
