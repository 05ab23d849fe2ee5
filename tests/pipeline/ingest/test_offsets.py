import random

import pytest
from aiokafka import TopicPartition

from pipeline.ingest.offsets import OffsetTracker

TP = TopicPartition("documents", 0)


def test_commits_only_the_contiguous_acknowledged_prefix() -> None:
    tracker = OffsetTracker()
    epoch = tracker.assign(TP)
    tracker.track(TP, epoch, [10, 11, 12, 13])
    assert tracker.committable() == {TP: 10}
    tracker.ack(TP, epoch, [11, 13])
    assert tracker.committable() == {TP: 10}
    tracker.ack(TP, epoch, [10])
    assert tracker.committable() == {TP: 12}
    tracker.mark_committed({TP: 12})
    assert tracker.committable() == {}
    tracker.ack(TP, epoch, [12])
    assert tracker.committable() == {TP: 14}
    tracker.mark_committed({TP: 14})
    assert tracker.all_committed()


def test_random_ack_order_never_commits_over_a_gap() -> None:
    rng = random.Random(7)
    tracker = OffsetTracker()
    epoch = tracker.assign(TP)
    offsets = list(range(100, 400, 3))  # compacted topics leave gaps between offsets
    tracker.track(TP, epoch, offsets)
    order = offsets[:]
    rng.shuffle(order)
    acked: set[int] = set()
    for offset in order:
        tracker.ack(TP, epoch, [offset])
        acked.add(offset)
        target = tracker.committable().get(TP)
        unacked = [o for o in offsets if o not in acked]
        expected = min(unacked) if unacked else offsets[-1] + 1
        assert target == expected
    assert tracker.pending() == 0


def test_acks_from_a_revoked_epoch_are_ignored() -> None:
    tracker = OffsetTracker()
    old = tracker.assign(TP)
    tracker.track(TP, old, [0, 1, 2])
    tracker.revoke(TP)
    new = tracker.assign(TP, committed=0)
    tracker.ack(TP, old, [0, 1, 2])
    assert tracker.committable() == {}
    tracker.track(TP, new, [0, 1])
    tracker.ack(TP, new, [0])
    assert tracker.committable() == {TP: 1}
    assert tracker.pending() == 1


def test_tracking_backwards_is_a_bug() -> None:
    tracker = OffsetTracker()
    epoch = tracker.assign(TP)
    tracker.track(TP, epoch, [5])
    with pytest.raises(ValueError):
        tracker.track(TP, epoch, [5])


def test_partitions_are_independent() -> None:
    other = TopicPartition("documents", 1)
    tracker = OffsetTracker()
    e0, e1 = tracker.assign(TP), tracker.assign(other)
    tracker.track(TP, e0, [0, 1])
    tracker.track(other, e1, [7])
    tracker.ack(other, e1, [7])
    assert tracker.committable() == {TP: 0, other: 8}
    assert tracker.pending(TP) == 2 and tracker.pending(other) == 0
