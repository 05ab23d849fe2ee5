"""Flow control (pause / resume) and the transient-failure retry loop, with a fake consumer."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from pipeline.ingest.flow import FlowControl
from pipeline.ingest.retry import retry_transient
from pipeline.milvus.errors import SinkUnavailable
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
    flow, consumer = FlowControl(max_inflight_tokens=100), FakeConsumer()
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
    flow, consumer = FlowControl(max_inflight_tokens=100), FakeConsumer()
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
