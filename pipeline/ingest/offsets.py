"""Which Kafka offsets are safe to commit.

Work finishes out of order (units of one partition are embedded concurrently, and
partitions are independent), but a Kafka commit means "everything below this offset is
done".  :class:`OffsetTracker` therefore commits, per partition, only the contiguous
prefix of offsets whose writes were acknowledged by every replica.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from aiokafka import TopicPartition


@dataclass
class _PartitionState:
    epoch: int
    # Offsets handed out, in the order they were polled (strictly increasing).
    in_order: deque[int] = field(default_factory=deque)
    done: set[int] = field(default_factory=set)
    # Offset of the next record to process once everything tracked is done.
    next_offset: int | None = None
    committed: int | None = None


class OffsetTracker:
    """Per-partition bookkeeping of tracked, acknowledged and committed offsets.

    Guarantees:
    - :meth:`committable` never returns an offset above a tracked offset that is not
      acknowledged (no gap is ever committed over).
    - Acknowledgements that carry the epoch of a revoked assignment are ignored, so work
      that finishes after its partition moved to another consumer commits nothing.
    """

    def __init__(self) -> None:
        self._partitions: dict[TopicPartition, _PartitionState] = {}
        self._epochs = 0

    def assign(self, tp: TopicPartition, committed: int | None = None) -> int:
        """Start tracking ``tp`` afresh; returns the epoch to pass to :meth:`track` and :meth:`ack`."""
        self._epochs += 1
        self._partitions[tp] = _PartitionState(epoch=self._epochs, committed=committed)
        return self._epochs

    def revoke(self, tp: TopicPartition) -> None:
        """Forget ``tp``: later acknowledgements for its old epoch are ignored."""
        self._partitions.pop(tp, None)

    def epoch(self, tp: TopicPartition) -> int | None:
        """The current epoch of ``tp``, or None when it is not assigned."""
        state = self._partitions.get(tp)
        return state.epoch if state else None

    def track(self, tp: TopicPartition, epoch: int, offsets: Iterable[int]) -> None:
        """Record that ``offsets`` (increasing, above everything tracked before) are in flight."""
        state = self._state(tp, epoch)
        if state is None:
            return
        for offset in offsets:
            if state.next_offset is not None and offset < state.next_offset:
                raise ValueError(f"{tp}: offset {offset} tracked after {state.next_offset - 1}")
            state.in_order.append(offset)
            state.next_offset = offset + 1

    def ack(self, tp: TopicPartition, epoch: int, offsets: Iterable[int]) -> None:
        """Mark ``offsets`` as fully written (every replica and the dead-letter topic acknowledged)."""
        state = self._state(tp, epoch)
        if state is None:
            return
        state.done.update(offsets)
        while state.in_order and state.in_order[0] in state.done:
            state.done.discard(state.in_order.popleft())

    def committable(self) -> dict[TopicPartition, int]:
        """Per partition, the offset to commit now (next record to read), where it moved forward."""
        result: dict[TopicPartition, int] = {}
        for tp, state in self._partitions.items():
            target = state.in_order[0] if state.in_order else state.next_offset
            if target is not None and (state.committed is None or target > state.committed):
                result[tp] = target
        return result

    def mark_committed(self, offsets: dict[TopicPartition, int]) -> None:
        """Record a successful commit of ``offsets``."""
        for tp, offset in offsets.items():
            state = self._partitions.get(tp)
            if state is not None and (state.committed is None or offset > state.committed):
                state.committed = offset

    def pending(self, tp: TopicPartition | None = None) -> int:
        """How many tracked offsets are not acknowledged yet (for one partition or all)."""
        states = [self._partitions[tp]] if tp in self._partitions else []
        if tp is None:
            states = list(self._partitions.values())
        return sum(len(s.in_order) for s in states)

    def all_committed(self) -> bool:
        """True when nothing is pending and every acknowledged offset has been committed."""
        return self.pending() == 0 and not self.committable()

    def _state(self, tp: TopicPartition, epoch: int) -> _PartitionState | None:
        state = self._partitions.get(tp)
        if state is None or state.epoch != epoch:
            return None
        return state
