"""Run summaries report what was measured: each member's busy time on its own clock, no invented span."""

from __future__ import annotations

import pytest

from pipeline.ingest.consumer import ConsumerStats
from pipeline.runtime.run_summary import BUSY, GroupStats, describe_run


def member(events: int, first: float | None, last: float | None, **counters: int) -> ConsumerStats:
    return ConsumerStats(events=events, first_record_at=first, last_ack_at=last, **counters)


def test_a_single_consumer_reports_its_rate_over_its_own_measured_busy_time() -> None:
    stats = member(30, 100.0, 103.0, documents_written=25, chunks_written=40, dead_letters=2)
    line = describe_run(stats)
    assert line.startswith("30 events: 25 documents written (40 chunks), 0 deleted, 2 dead-lettered; ")
    assert f"30 events in 3.0 s busy (10.0 events/s) ({BUSY})" in line
    assert "no busy time measured" in describe_run(member(0, None, None))


def test_a_group_sums_the_counters_and_keeps_each_members_busy_time() -> None:
    # Monotonic clocks of two processes: their readings cannot be compared or subtracted across members.
    one = member(30, 1000.0, 1003.0, documents_written=30, chunks_written=31, tokens_embedded=300, commits=4)
    two = member(20, 5.0, 10.0, documents_written=18, documents_deleted=1, dead_letters=1, commits=2)
    idle = member(0, None, None)
    group = GroupStats((one, two, idle))
    assert (group.events, group.documents_written, group.documents_deleted, group.dead_letters) == (
        50,
        48,
        1,
        1,
    )
    assert (group.chunks_written, group.tokens_embedded, group.commits) == (31, 300, 6)
    assert group.members == (one, two, idle)  # every member's own figures, untouched
    assert [m.busy_seconds() for m in group.members] == [3.0, 5.0, 0.0]
    assert group.busiest_member_seconds() == 5.0
    # What used to be reported: 50 events over the busiest member's 5 s, as if the group's rate.
    assert not hasattr(group, "events_per_second") and not hasattr(group, "busy_seconds")
    text = describe_run(group)
    assert text.splitlines() == [
        "50 events: 48 documents written (31 chunks), 1 deleted, 1 dead-lettered, by 3 consumer(s)",
        "  consumer-0: 30 events in 3.0 s busy (10.0 events/s)",
        "  consumer-1: 20 events in 5.0 s busy (4.0 events/s)",
        "  consumer-2: 0 events, no busy time measured",
        f"  busy = {BUSY}, each on its own clock; the busiest member was busy 5.0 s (no group-wide rate: "
        "when the group as a whole started and finished was not measured)",
    ]


def test_an_empty_group_reports_no_busy_time() -> None:
    assert GroupStats(()).busiest_member_seconds() == pytest.approx(0.0)


def test_a_group_sums_stage_and_cpu_seconds_key_by_key() -> None:
    one, two = member(1, 0.0, 1.0), member(1, 0.0, 1.0)
    one.add_stage_time("chunk", 2.0)
    one.add_cpu_time("build", 1.5)
    two.add_stage_time("chunk", 1.0)
    two.add_stage_time("write", 4.0)
    two.add_cpu_time("write", 0.5)
    group = GroupStats((one, two, member(0, None, None)))
    assert group.stage_seconds == {"chunk": 3.0, "write": 4.0}
    assert group.cpu_seconds == {"build": 1.5, "write": 0.5}
