"""run_consumer_actors over fake actor handles (no Ray): the members' own figures come back, summed
where they add up, with no fabricated timestamps.

The real actors: tests/integration/test_consumer_actors.py.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from pipeline.ingest.consumer import ConsumerStats
from pipeline.runtime import consumer_actors
from pipeline.runtime.assemble import Runtime
from pipeline.runtime.run_summary import GroupStats


class _Method:
    def __init__(self, call: Any) -> None:
        self._call = call

    def remote(self, *args: Any) -> Any:
        return self._call(*args)


class FakeConsumerActor:
    """Answers ``run`` with the stats a ConsumerActor returns, as its handle's ``.remote`` would."""

    def __init__(self, stats: ConsumerStats) -> None:
        self.stats = stats
        self.until_idle_s: float | None = None
        self.run = _Method(self._run)
        self.stop = _Method(self._stop)

    async def _run(self, until_idle_s: float | None) -> ConsumerStats:
        self.until_idle_s = until_idle_s
        await asyncio.sleep(0)
        return self.stats

    async def _stop(self) -> None:
        return None


async def test_the_group_summary_carries_each_members_measured_figures(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    killed: list[Any] = []
    monkeypatch.setattr(consumer_actors.ray, "kill", lambda actor, no_restart: killed.append(actor))
    # Each member's clock is its own process's monotonic clock.
    first = ConsumerStats(events=40, chunks_written=40, commits=3, first_record_at=7000.0, last_ack_at=7004.0)
    second = ConsumerStats(events=10, dead_letters=2, commits=1, first_record_at=12.5, last_ack_at=13.5)
    actors = [FakeConsumerActor(first), FakeConsumerActor(second)]
    summary = await consumer_actors.run_consumer_actors(
        cast(Runtime, None), 2, asyncio.Event(), until_idle_s=2.0, actors=cast(list[Any], actors)
    )
    assert isinstance(summary, GroupStats)
    assert summary.members == (first, second)
    assert (summary.events, summary.dead_letters, summary.chunks_written, summary.commits) == (50, 2, 40, 4)
    assert [m.busy_seconds() for m in summary.members] == [4.0, 1.0]
    assert summary.busiest_member_seconds() == 4.0
    # Before, this came back as one ConsumerStats with first_record_at=0.0 and last_ack_at=4.0 made up:
    # "50 events in 4 s", a group rate nobody measured.
    assert [a.until_idle_s for a in actors] == [2.0, 2.0] and killed == actors
