"""RefusalBackoff: the waits of consecutive refusals of one request, on seeded generators."""

from __future__ import annotations

import random

import pytest

from workers.refusal_backoff import MAX_FACTOR, RefusalBackoff

HINT = 0.25


def waits(seed: int, refusals: int, hint: float = HINT) -> list[float]:
    backoff = RefusalBackoff(rng=random.Random(seed))
    return [backoff.delay(hint, n) for n in range(1, refusals + 1)]


def test_the_first_refusal_waits_exactly_the_hint_and_draws_nothing() -> None:
    rng = random.Random(3)
    state = rng.getstate()
    assert RefusalBackoff(rng=rng).delay(HINT, 1) == HINT
    assert rng.getstate() == state


def test_every_wait_lies_between_the_hint_and_its_window() -> None:
    for seed in range(200):
        for n, wait in enumerate(waits(seed, 12), start=1):
            window = min(2.0 ** (n - 1), MAX_FACTOR)
            assert HINT <= wait <= HINT * window
            assert wait <= HINT * MAX_FACTOR


def test_waits_grow_with_consecutive_refusals() -> None:
    # Over many requests, the mean wait of the n-th refusal follows the window (1 + window) / 2.
    samples = [waits(seed, 6) for seed in range(2000)]
    means = [sum(run[n] for run in samples) / len(samples) / HINT for n in range(6)]
    assert means[0] == 1.0
    for n, expected in enumerate([1.0, 1.5, 2.5, 4.5, 4.5, 4.5]):
        assert means[n] == pytest.approx(expected, rel=0.05)
    assert means[0] < means[1] < means[2] < means[3]
    # The window stops at the cap: late refusals reach near it but never past it.
    late = [run[5] / HINT for run in samples]
    assert max(late) > 0.95 * MAX_FACTOR and max(late) <= MAX_FACTOR


def test_waits_are_jittered_and_reproducible_from_the_seed() -> None:
    assert waits(1, 8) == waits(1, 8)
    assert waits(1, 8)[1:] != waits(2, 8)[1:]
    # Callers refused together do not come back together: their second waits are all different.
    second = {waits(seed, 2)[1] for seed in range(50)}
    assert len(second) == 50


def test_one_generator_gives_different_draws_for_the_same_refusal() -> None:
    backoff = RefusalBackoff(rng=random.Random(5))
    draws = [backoff.delay(HINT, 4) for _ in range(20)]
    assert len(set(draws)) == 20


def test_the_wait_scales_with_the_hint_it_was_given() -> None:
    assert waits(9, 5, hint=2.0) == pytest.approx([w * 8 for w in waits(9, 5, hint=0.25)])


def test_a_long_run_of_refusals_stays_within_the_cap() -> None:
    backoff = RefusalBackoff(rng=random.Random(0))
    assert all(HINT <= backoff.delay(HINT, n) <= HINT * MAX_FACTOR for n in (50, 1023, 5000, 10**9))


def test_a_cap_of_one_is_no_backoff_and_below_one_is_refused() -> None:
    assert [RefusalBackoff(cap=1).delay(HINT, n) for n in range(1, 6)] == [HINT] * 5
    with pytest.raises(ValueError, match="cap"):
        RefusalBackoff(cap=0.5)
    with pytest.raises(ValueError, match="refusals"):
        RefusalBackoff().delay(HINT, 0)
