"""Flow control (pause / resume) and the transient-failure retry loop, with a fake consumer."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from pipeline.ingest.flow import RATE_HORIZON_S, FlowControl
from pipeline.ingest.retry import retry_transient
from pipeline.milvus.errors import SinkUnavailable
from pipeline.settings.ingest import ADAPTIVE_MAX_TOKENS, ADAPTIVE_MIN_TOKENS, UNMEASURED_POLL_RECORDS
from workers.errors import ConfigError

PARTITIONS = {TopicPartition("t", 0), TopicPartition("t", 1)}


class FakeConsumer:
    def __init__(self) -> None:
        self.paused: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return set(PARTITIONS)

    def pause(self, *partitions: TopicPartition) -> None:
        self.paused.update(partitions)

    def resume(self, *partitions: TopicPartition) -> None:
        self.paused.difference_update(partitions)


def test_budget_pauses_and_resumes_below_half() -> None:
    flow, consumer = FlowControl(max_inflight_tokens=100, inflight_seconds=5.0), FakeConsumer()
    flow.dispatched(60)
    flow.apply(consumer)
    assert not consumer.paused
    flow.dispatched(40)
    flow.apply(consumer)
    assert consumer.paused == PARTITIONS and flow.paused
    flow.released(40)  # 60 left: above half the budget, still paused
    flow.apply(consumer)
    assert consumer.paused == PARTITIONS
    flow.released(60)
    flow.apply(consumer)
    assert not consumer.paused and (flow.tokens, flow.units) == (0, 0)


def test_a_failing_write_pauses_until_it_recovers() -> None:
    flow, consumer = FlowControl(max_inflight_tokens=100, inflight_seconds=5.0), FakeConsumer()
    flow.write_failing()
    flow.write_failing()  # two lanes retrying
    flow.apply(consumer)
    assert consumer.paused == PARTITIONS
    flow.write_recovered()
    flow.apply(consumer)
    assert consumer.paused == PARTITIONS  # the other lane still fails
    flow.write_recovered()
    flow.apply(consumer)
    assert not consumer.paused


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_units(flow: FlowControl, clock: FakeClock, *, rate: float, seconds: float, tokens: int) -> None:
    """Units of ``tokens`` written back to back at ``rate`` tokens/s for ``seconds``, one in flight."""
    for _ in range(int(seconds * rate / tokens)):
        flow.dispatched(tokens)
        clock.now += tokens / rate
        flow.released(tokens)


def test_the_adaptive_budget_is_seconds_of_the_rate_written_within_its_bounds() -> None:
    clock = FakeClock()
    flow = FlowControl(None, inflight_seconds=5.0, clock=clock)
    assert flow.budget == ADAPTIVE_MIN_TOKENS  # nothing measured yet
    run_units(flow, clock, rate=200_000, seconds=0.5, tokens=10_000)
    assert flow.budget == ADAPTIVE_MIN_TOKENS  # half a second: not enough evidence
    run_units(flow, clock, rate=200_000, seconds=20, tokens=10_000)
    assert flow.budget == pytest.approx(1_000_000, rel=1e-6)
    run_units(flow, clock, rate=2_000_000, seconds=60, tokens=100_000)
    assert flow.budget == ADAPTIVE_MAX_TOKENS  # 10M wanted: the ceiling bounds memory
    run_units(flow, clock, rate=10_000, seconds=60, tokens=1_000)
    assert flow.budget == ADAPTIVE_MIN_TOKENS  # 50k wanted: the floor


def test_the_rate_forgets_the_past_within_its_horizon() -> None:
    clock = FakeClock()
    flow = FlowControl(None, inflight_seconds=5.0, clock=clock)
    run_units(flow, clock, rate=400_000, seconds=60, tokens=20_000)
    run_units(flow, clock, rate=100_000, seconds=RATE_HORIZON_S, tokens=5_000)
    rate = flow.meter.rate()
    assert rate is not None and 100_000 < rate < 250_000  # one horizon: mostly the new rate
    run_units(flow, clock, rate=100_000, seconds=5 * RATE_HORIZON_S, tokens=5_000)
    assert flow.meter.rate() == pytest.approx(100_000, rel=0.05)


def test_idle_time_and_dropped_units_do_not_lower_the_rate() -> None:
    clock = FakeClock()
    flow = FlowControl(None, inflight_seconds=5.0, clock=clock)
    run_units(flow, clock, rate=300_000, seconds=30, tokens=30_000)
    before = flow.meter.rate()
    clock.now += 3600  # a quiet topic: nothing in flight for an hour
    flow.dispatched(30_000)
    assert flow.meter.rate() == pytest.approx(before)
    clock.now += 0.1
    flow.released(30_000, written=False)  # dropped on a revocation: not a measure of anything
    assert flow.meter.rate() == pytest.approx(300_000, rel=0.05)
    assert (flow.tokens, flow.units) == (0, 0)


def test_a_fixed_budget_ignores_the_rate() -> None:
    clock = FakeClock()
    flow = FlowControl(100, inflight_seconds=5.0, clock=clock)
    run_units(flow, clock, rate=1_000_000, seconds=10, tokens=50)
    assert flow.budget == 100


def test_the_adaptive_budget_pauses_and_resumes_at_its_current_figure() -> None:
    clock, consumer = FakeClock(), FakeConsumer()
    flow = FlowControl(None, inflight_seconds=5.0, clock=clock)
    run_units(flow, clock, rate=400_000, seconds=30, tokens=40_000)
    assert flow.budget == pytest.approx(2_000_000, rel=1e-6)
    flow.dispatched(1_900_000)
    flow.apply(consumer)
    assert not consumer.paused  # under today's budget, though 14x the floor
    flow.dispatched(200_000)
    flow.apply(consumer)
    assert consumer.paused == PARTITIONS and flow.largest_budget == flow.budget


def test_a_poll_asks_for_about_the_records_that_fill_the_headroom() -> None:
    flow = FlowControl(100_000, inflight_seconds=5.0)
    # Nothing chunked yet, no estimate of an event's tokens: a few records, to learn it.
    assert flow.records_wanted(500) == UNMEASURED_POLL_RECORDS
    assert flow.records_wanted(3) == 3
    flow.dispatched(0)
    flow.chunked(30_000, events=10)  # 3,000 tokens an event (long documents)
    assert flow.records_wanted(500) == 24  # 70,000 left: 23.3 events, rounded up
    flow.dispatched(0)
    flow.chunked(80_000, events=20)
    assert flow.records_wanted(500) == 1  # 110,000 in flight, over the budget: one, never zero
    flow.released(110_000)
    flow.released(0)
    flow.dispatched(0)
    flow.chunked(1_000, events=100)  # short events now: the estimate follows them
    assert 24 < flow.records_wanted(500) <= 500


async def test_retry_transient_backs_off_and_reports_the_outage_once() -> None:
    calls, events = 0, []

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise SinkUnavailable("down", retry_after=0.0)
        return "done"

    result = await retry_transient(
        "write",
        flaky,
        0.05,
        on_failing=lambda: events.append("failing"),
        on_recovered=lambda: events.append("ok"),
    )
    assert (result, calls, events) == ("done", 4, ["failing", "ok"])


async def test_retry_transient_lets_other_errors_through_and_still_reports_recovery() -> None:
    calls, events = 0, []

    async def broken() -> None:
        nonlocal calls
        calls += 1
        raise SinkUnavailable("down", retry_after=0.0) if calls == 1 else ConfigError("bad")

    with pytest.raises(ConfigError):
        await retry_transient(
            "write",
            broken,
            0.05,
            on_failing=lambda: events.append("failing"),
            on_recovered=lambda: events.append("ok"),
        )
    assert (calls, events) == (2, ["failing", "ok"])
