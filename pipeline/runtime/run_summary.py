"""What an ingestion run reports: counters and busy time exactly as they were measured.

A single consumer measures its busy time on one clock (:meth:`ConsumerStats.busy_seconds`: from the
first record it polled to the last unit it acknowledged), so its events per busy second is a measured
rate.  A consumer group's members run in other processes, often on other nodes: each member measured
its own busy time on its own clock, but when the group as a whole started and finished was measured by
no one.  :class:`GroupStats` therefore keeps every member's figures, sums only what adds up (the
counters), and offers the busiest member's busy time under that name; it has no group-wide duration
and no group-wide events/s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from pipeline.ingest.consumer import ConsumerStats

BUSY = "first record polled to last unit acknowledged"
"""What a member's busy time spans, for labels."""


@dataclass(frozen=True)
class GroupStats:
    """The counters of a consumer group's run: each member's own (in member order) and their sums.

    A member restarted mid-run reports only its last run: the counters of the process that died are
    lost with it, so the sums are what the surviving runs counted.
    """

    members: tuple[ConsumerStats, ...]

    @property
    def events(self) -> int:
        return sum(m.events for m in self.members)

    @property
    def dead_letters(self) -> int:
        return sum(m.dead_letters for m in self.members)

    @property
    def documents_written(self) -> int:
        return sum(m.documents_written for m in self.members)

    @property
    def documents_deleted(self) -> int:
        return sum(m.documents_deleted for m in self.members)

    @property
    def documents_superseded(self) -> int:
        return sum(m.documents_superseded for m in self.members)

    @property
    def chunks_written(self) -> int:
        return sum(m.chunks_written for m in self.members)

    @property
    def tokens_embedded(self) -> int:
        return sum(m.tokens_embedded for m in self.members)

    @property
    def largest_inflight_budget(self) -> int:
        """The largest in-flight budget of any member."""
        return max((m.largest_inflight_budget for m in self.members), default=0)

    @property
    def commits(self) -> int:
        return sum(m.commits for m in self.members)

    @property
    def stage_seconds(self) -> dict[str, float]:
        """Each stage's seconds summed over the members (see :attr:`ConsumerStats.stage_seconds`)."""
        return _summed(member.stage_seconds for member in self.members)

    @property
    def cpu_seconds(self) -> dict[str, float]:
        """Thread CPU seconds by work, summed over the members (see :attr:`ConsumerStats.cpu_seconds`)."""
        return _summed(member.cpu_seconds for member in self.members)

    def busiest_member_seconds(self) -> float:
        """The longest busy time any member measured on its own clock (0.0 when none had work).

        It is not the group's duration: the members' busy spans need not overlap."""
        return max((m.busy_seconds() for m in self.members), default=0.0)


def _summed(figures: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The figures key by key, summed (a key missing from some counts 0 there)."""
    totals: dict[str, float] = {}
    for figure in figures:
        for key, value in figure.items():
            totals[key] = totals.get(key, 0.0) + value
    return totals


def _counts(stats: ConsumerStats | GroupStats) -> str:
    return (
        f"{stats.events} events: {stats.documents_written} documents written "
        f"({stats.chunks_written} chunks), {stats.documents_deleted} deleted, "
        f"{stats.dead_letters} dead-lettered"
        # Only a fenced-off member's writes are superseded: worth a word when it happened.
        + (
            f", {stats.documents_superseded} left out (a replica held a newer write)"
            if stats.documents_superseded
            else ""
        )
    )


def _member_rate(stats: ConsumerStats) -> str:
    busy = stats.busy_seconds()
    if busy <= 0:
        return f"{stats.events} events, no busy time measured"
    return f"{stats.events} events in {busy:.1f} s busy ({stats.events_per_second():.1f} events/s)"


def describe_run(stats: ConsumerStats | GroupStats) -> str:
    """One line per run of what was counted and measured, every duration and rate labelled with what
    it spans; a group gets one line per member and no group-wide rate."""
    if isinstance(stats, ConsumerStats):
        return f"{_counts(stats)}; {_member_rate(stats)} ({BUSY})"
    lines = [f"{_counts(stats)}, by {len(stats.members)} consumer(s)"]
    lines += [f"  consumer-{i}: {_member_rate(m)}" for i, m in enumerate(stats.members)]
    lines.append(
        f"  busy = {BUSY}, each on its own clock; the busiest member was busy "
        f"{stats.busiest_member_seconds():.1f} s (no group-wide rate: when the group as a whole "
        "started and finished was not measured)"
    )
    return "\n".join(lines)
