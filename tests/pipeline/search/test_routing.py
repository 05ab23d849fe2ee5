"""The routing policy over a recall/latency profile: pure, no services."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.search.routing import NO_PROFILE_REASON, Profile, Strategy, choose, route

FULL, SMALL, FUNNEL, MID = Strategy(384), Strategy(64), Strategy(64, 20), Strategy(128)


def profile() -> Profile:
    # recall@10, p50 ms: as eval-recall writes them (rows of its JSON).
    rows = [
        {"dim": 384, "funnel_factor": None, "recall": 1.0, "p50_ms": 9.0},
        {"dim": 128, "funnel_factor": None, "recall": 0.80, "p50_ms": 4.0},
        {"dim": 64, "funnel_factor": None, "recall": 0.62, "p50_ms": 2.0},
        {"dim": 64, "funnel_factor": 20, "recall": 0.97, "p50_ms": 5.0},
    ]
    return Profile.from_rows(rows, "test")


def test_a_recall_target_gets_the_fastest_strategy_reaching_it() -> None:
    assert choose(profile(), recall_target=0.95).strategy == FUNNEL
    assert choose(profile(), recall_target=0.99).strategy == FULL
    assert choose(profile(), recall_target=0.5).strategy == SMALL


def test_a_latency_budget_gets_the_most_accurate_strategy_within_it() -> None:
    assert choose(profile(), latency_budget_ms=5.0).strategy == FUNNEL
    assert choose(profile(), latency_budget_ms=4.5).strategy == MID
    assert choose(profile(), latency_budget_ms=100).strategy == FULL


def test_both_take_the_fastest_meeting_both_and_the_budget_wins_a_conflict() -> None:
    assert choose(profile(), recall_target=0.7, latency_budget_ms=6).strategy == MID
    conflict = choose(profile(), recall_target=0.99, latency_budget_ms=6)
    assert conflict.strategy == FUNNEL and "out of reach" in conflict.reason


def test_unreachable_requests_degrade_to_the_nearest_strategy() -> None:
    assert choose(profile(), recall_target=1.0).strategy == FULL
    assert choose(profile(), latency_budget_ms=0.5).strategy == SMALL
    assert choose(profile()).strategy == FULL  # nothing asked: the most accurate


def test_invalid_requests_are_refused() -> None:
    for bad in ({"recall_target": 0.0}, {"recall_target": 1.2}, {"latency_budget_ms": 0.0}):
        with pytest.raises(ValueError):
            choose(profile(), **bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        choose(Profile())


def test_observed_latencies_move_the_choice() -> None:
    measured = profile()
    for _ in range(20):  # the funnel turns out slow on this box
        measured.observe(FUNNEL, 50.0)
    assert choose(measured, recall_target=0.95).strategy == FULL
    measured.observe(Strategy(999), 1.0)  # an unknown strategy is ignored
    assert Strategy(999) not in measured.entries


@pytest.mark.parametrize(
    "request_",
    [{"recall_target": 0.5}, {"recall_target": 0.9}, {"latency_budget_ms": 0.1}, {"latency_budget_ms": 1e6}],
)
def test_without_a_measured_profile_routing_answers_with_the_native_replica_and_says_why(
    request_: dict[str, float],
) -> None:
    # Nothing is assumed: no recall borrowed from another model, no latency made up from dimensions.
    choice = route(None, 384, **request_)  # type: ignore[arg-type]
    assert choice.strategy == FULL and choice.expected is None
    assert choice.reason == NO_PROFILE_REASON
    assert "no recall/latency profile was measured" in choice.reason
    assert (
        "eval-recall" in choice.reason
        and "--out DIR" in choice.reason
        and "search.profile_path" in choice.reason
    )


def test_route_uses_a_measured_profile_and_refuses_bad_requests_without_one() -> None:
    assert route(profile(), 384, recall_target=0.95) == choose(profile(), recall_target=0.95)
    assert "measured profile: test" in route(profile(), 384, recall_target=0.95).reason
    assert route(None, 384).strategy == FULL and route(None, 384).reason != NO_PROFILE_REASON
    for bad in ({"recall_target": 0.0}, {"recall_target": 1.2}, {"latency_budget_ms": -1.0}):
        with pytest.raises(ValueError):
            route(None, 384, **bad)  # type: ignore[arg-type]


def test_load_keeps_strategies_on_existing_replicas(tmp_path: Path) -> None:
    path = tmp_path / "recall.json"
    rows = [
        {"dim": 384, "funnel_factor": None, "recall": 1.0, "p50_ms": 9.0},
        {"dim": 32, "funnel_factor": 50, "recall": 0.96, "p50_ms": 3.0},
    ]
    path.write_text(json.dumps({"rows": rows}))
    loaded = Profile.load(path, [384, 128])
    assert set(loaded.entries) == {FULL} and loaded.source == str(path)
    with pytest.raises(ValueError, match="no rows"):
        Profile.load(path, [128])
