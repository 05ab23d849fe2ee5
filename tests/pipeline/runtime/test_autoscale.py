"""The autoscaling policy: grow at once to what the backlog asks, shrink slowly, stay in bounds."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.runtime import autoscale as autoscale_module
from pipeline.runtime.autoscale import Backlog, ScaleState, decide, wanted_actors
from pipeline.settings import ScalingSettings, Settings

SETTINGS = ScalingSettings(
    autoscale=True,
    min_embedders=1,
    max_embedders=4,
    lag_per_embedder=1000,
    queued_tokens_per_embedder=10_000,
    scale_down_after_s=60,
    cooldown_s=10,
)


def backlog(actors: int, lag: int = 0, queued: int = 0, at: float = 0.0) -> Backlog:
    return Backlog(actors=actors, lag_events=lag, queued_tokens=queued, at=at)


def test_wanted_actors_follow_the_larger_backlog_within_bounds() -> None:
    assert wanted_actors(SETTINGS, backlog(1)) == 1
    assert wanted_actors(SETTINGS, backlog(1, lag=2500)) == 3
    assert wanted_actors(SETTINGS, backlog(1, lag=10, queued=15_000)) == 2
    assert wanted_actors(SETTINGS, backlog(1, lag=10**9)) == 4


def test_grows_at_once_then_waits_out_the_cooldown() -> None:
    size, state = decide(SETTINGS, ScaleState(), backlog(1, lag=2500, at=100))
    assert size == 3
    size, state = decide(SETTINGS, state, backlog(3, lag=3500, at=105))
    assert size == 3  # cooling down
    size, state = decide(SETTINGS, state, backlog(3, lag=3500, at=110))
    assert size == 4


def test_shrinks_one_actor_at_a_time_after_a_calm_spell() -> None:
    state = ScaleState(changed_at=0)
    size, state = decide(SETTINGS, state, backlog(3, at=100))
    assert size == 3 and state.calm_since == 100
    size, state = decide(SETTINGS, state, backlog(3, at=159))
    assert size == 3
    size, state = decide(SETTINGS, state, backlog(3, at=160))
    assert size == 2
    size, state = decide(SETTINGS, state, backlog(2, at=200))
    assert size == 2  # the calm spell starts over after each removal
    size, state = decide(SETTINGS, state, backlog(2, at=221))
    assert size == 1
    size, state = decide(SETTINGS, state, backlog(1, at=1000))
    assert size == 1  # never below min_embedders


def test_a_burst_during_the_calm_spell_resets_it() -> None:
    state = ScaleState(changed_at=0)
    _, state = decide(SETTINGS, state, backlog(3, at=100))
    size, state = decide(SETTINGS, state, backlog(3, lag=2500, at=130))
    assert size == 3 and state.calm_since is None
    size, state = decide(SETTINGS, state, backlog(3, at=170))
    assert size == 3 and state.calm_since == 170


def test_a_pool_below_the_minimum_grows_at_once() -> None:
    settings = SETTINGS.model_copy(update={"min_embedders": 2})
    size, _ = decide(settings, ScaleState(changed_at=100), backlog(1, at=101))
    assert size == 2


class _FakePool:
    def __init__(self) -> None:
        self.size = 1
        self.queued = 0

    async def stats(self) -> list[dict[str, int]]:
        return [{"queued_tokens": self.queued}] * self.size


class _FakeScaler:
    def __init__(self, pool: _FakePool) -> None:
        self.pool = pool
        self.targets: list[int] = []

    async def scale_to(self, target: int) -> None:
        self.targets.append(target)
        self.pool.size = target


async def test_the_loop_grows_the_pool_with_the_lag_and_survives_a_broker_outage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lags = iter([{0: (0, 3500)}, OSError("broker down"), {0: (3000, 3500)}])

    async def fake_lag(kafka: object, topic: str) -> dict[int, tuple[int, int]]:
        lag = next(lags, {0: (3500, 3500)})
        if isinstance(lag, Exception):
            raise lag
        return lag

    monkeypatch.setattr(autoscale_module, "partition_lag", fake_lag)
    settings = Settings(scaling=SETTINGS.model_copy(update={"check_interval_s": 0.01, "cooldown_s": 0}))
    pool = _FakePool()
    scaler = _FakeScaler(pool)
    task = asyncio.create_task(autoscale_module.autoscale(settings, pool, scaler))  # type: ignore[arg-type]
    for _ in range(200):
        if scaler.targets:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.1)  # the outage round and a calm one pass without stopping the loop
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert scaler.targets == [4]  # lag 3500 at 1000 per actor; then held (no calm spell long enough)
