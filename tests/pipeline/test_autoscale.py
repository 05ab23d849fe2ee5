"""The autoscaling policy: grow at once to what the backlog asks, shrink slowly, stay in bounds."""

from __future__ import annotations

from pipeline.autoscale import Backlog, ScaleState, decide, wanted_actors
from pipeline.config import ScalingSettings

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
