"""Attaching to embedder actors another process started (``EmbedderPool.attach`` -> ``find_embedders``),
on the session's real Ray cluster: attaching waits, reports, and never touches the owner's actors."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.util.state import get_actor

from workers.actor import EmbedderActor
from workers.errors import EmbedderUnavailable
from workers.pool import EmbedderPool
from workers.settings import BatchSettings, ModelSettings, PoolSettings
from workers.spawn import kill_embedders, spawn_embedder

pytestmark = pytest.mark.asyncio(loop_scope="module")

RESTART_S = 20.0  # how long a restarted SlowRestartEmbedder takes before it loads its model
ATTACH_S = 3.0  # how long the attaching pool waits


class SlowRestartEmbedder(EmbedderActor):
    """An embedder whose restarts stall ``RESTART_S`` before loading the model (as a restart waiting on
    a slow disk or a busy GPU would).  Its first start is marked as a file in :attr:`marker_dir`,
    which survives the restart; set it on a subclass made by the test."""

    marker_dir = ""

    def __init__(
        self, model: ModelSettings, batching: BatchSettings, index: int, namespace: str = ""
    ) -> None:
        marker = Path(self.marker_dir) / f"embedder-{index}"
        if marker.exists():
            time.sleep(RESTART_S)
        marker.touch()
        super().__init__(model, batching, index, namespace)


def ray_state(handle: Any) -> str:
    """The actor's state as Ray's state API reports it (ALIVE, RESTARTING, PENDING_CREATION, DEAD)."""
    state = get_actor(handle._actor_id.hex(), address=ray.get_runtime_context().gcs_address, timeout=10)
    assert state is not None
    return str(state.state)


async def until_state(handle: Any, wanted: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while (state := await asyncio.to_thread(ray_state, handle)) != wanted:
        assert time.monotonic() < deadline, f"the actor is {state}, not {wanted}, after {timeout_s:.0f}s"
        await asyncio.sleep(0.2)


async def test_attach_uses_the_ready_actors_and_leaves_a_restarting_and_a_pending_one_alone(
    ray_namespace: str, tiny_qwen3_path: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests
    model = ModelSettings(name_or_path=str(tiny_qwen3_path))
    settings = PoolSettings(num_actors=2, cpus_per_actor=0.5, ready_timeout_s=300)
    actor = type("SlowRestart", (SlowRestartEmbedder,), {"marker_dir": str(tmp_path)})
    owner = await EmbedderPool.start(
        model, BatchSettings(max_wait_ms=20), settings, namespace=ray_namespace, actor_class=actor
    )
    # embedder-2 waits for a node with a resource no node has: an actor waiting for a GPU node.
    waiting = settings.model_copy(update={"actor_resources": {"node_not_joined_yet": 1.0}})
    pending = spawn_embedder(model, BatchSettings(), waiting, 2, ray_namespace, gpus=False)
    try:
        restarting = ray.get_actor("embedder-1", namespace=ray_namespace)
        ray.kill(restarting, no_restart=False)
        await until_state(restarting, "RESTARTING", 30)

        caplog.set_level(logging.WARNING, logger="workers.spawn")
        started = time.monotonic()
        attached = await EmbedderPool.attach(settings, ray_namespace, timeout_s=ATTACH_S)
        waited = time.monotonic() - started

        # It waited its timeout, attached to the ready actor, and named the others with why.
        assert attached is not None and attached.size == 1
        assert ATTACH_S - 0.5 <= waited < ATTACH_S + 15
        assert [entry["actor"] for entry in await attached.stats()] == ["embedder-0"]
        assert set(attached.not_attached) == {"embedder-1", "embedder-2"}
        assert "RESTARTING" in attached.not_attached["embedder-1"]
        assert "PENDING_CREATION" in attached.not_attached["embedder-2"]
        assert "node_not_joined_yet" in attached.not_attached["embedder-2"]
        [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert "1 of 3" in warning and "embedder-1: " in warning and "embedder-2: " in warning
        assert (await attached.embed(["attached"], (8,)))[8].shape == (1, 8)

        # Afterwards every actor of the owner is alive: embedder-1 finishes its restart and answers,
        # embedder-0 answers, embedder-2 still waits for its node (nothing killed it).
        await until_state(restarting, "ALIVE", RESTART_S + 120)
        stats = await owner.stats()
        assert [entry["actor"] for entry in stats] == ["embedder-0", "embedder-1"]
        assert all("pid" in entry for entry in stats), stats
        calls = await asyncio.gather(*(owner.embed([f"owner text {i}"], (64,)) for i in range(8)))
        assert all(out[64].shape == (1, 64) for out in calls)
        assert all(entry["batches"] > 0 for entry in await owner.stats())  # both actors embedded
        assert ray_state(pending) == "PENDING_CREATION"
    finally:
        owner.shutdown()
        kill_embedders([pending])


async def test_attach_raises_naming_the_actors_when_none_is_ready_and_kills_none(ray_namespace: str) -> None:
    namespace = f"{ray_namespace}-pending"
    waiting = PoolSettings(cpus_per_actor=0.1, actor_resources={"node_not_joined_yet": 1.0})
    handles = [
        spawn_embedder(ModelSettings(), BatchSettings(), waiting, index, namespace, gpus=False)
        for index in range(2)
    ]
    try:
        with pytest.raises(EmbedderUnavailable, match="none was touched") as caught:
            await EmbedderPool.attach(waiting, namespace, timeout_s=1.0)
        for name in ("embedder-0", "embedder-1"):
            assert f"{name}: no answer within 1s; Ray says PENDING_CREATION" in str(caught.value)
        assert [ray_state(handle) for handle in handles] == ["PENDING_CREATION"] * 2
    finally:
        kill_embedders(handles)


async def test_attach_finds_nothing_in_an_empty_namespace(ray_namespace: str) -> None:
    assert await EmbedderPool.attach(PoolSettings(), f"{ray_namespace}-empty", timeout_s=1.0) is None
