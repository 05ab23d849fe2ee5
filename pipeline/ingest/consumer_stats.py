"""Counters of one consumer-group member's run (:class:`~pipeline.ingest.consumer.IngestConsumer`).

Filled in by the member (records polled, commits) and by its lanes (:mod:`pipeline.ingest.lane`:
units written and acknowledged); summed over members by the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass, field

STAGES = ("poll", "parse", "chunk", "embed", "write", "commit")
"""The stages a member times: waiting on the broker for records (``poll``), parsing events, chunking
and counting their tokens, awaiting the embedder pool (tokenization and forward passes happen in the
actors), writing every replica, committing offsets."""


@dataclass
class ConsumerStats:
    """Counters of one member's run; every count is of acknowledged work (a unit dropped on a
    revocation or a stop counts nowhere: its next owner counts it)."""

    events: int = 0  # events acknowledged: written or dead-lettered
    dead_letters: int = 0
    documents_written: int = 0
    documents_deleted: int = 0
    documents_superseded: int = 0  # writes left out: a replica held a newer one (another owner's)
    chunks_written: int = 0
    tokens_embedded: int = 0
    commits: int = 0
    largest_inflight_budget: int = 0
    """The largest in-flight budget the member's flow control used (the adaptive one grows)."""
    first_record_at: float | None = None
    last_ack_at: float | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    """Seconds spent in each stage (:data:`STAGES`, and ``write:<collection>`` per replica), summed
    over every unit: stages of different units overlap, so a stage can exceed the busy time."""

    cpu_seconds: dict[str, float] = field(default_factory=dict)
    """CPU time of the member's worker threads, by what they did: ``build`` (parse and chunk, on the
    chunk threads) and ``write`` (the Milvus client's side of every write: row checks, packing,
    sending).  Against the wall time of the same work (``parse + chunk``, ``write`` in
    :attr:`stage_seconds`) it tells waiting (for a core, the GIL, or Milvus' answer) from working."""

    def add_stage_time(self, stage: str, seconds: float) -> None:
        """Count ``seconds`` more spent in ``stage``."""
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds

    def add_cpu_time(self, work: str, seconds: float) -> None:
        """Count ``seconds`` more of thread CPU time spent on ``work`` (see :attr:`cpu_seconds`)."""
        self.cpu_seconds[work] = self.cpu_seconds.get(work, 0.0) + seconds

    def busy_seconds(self) -> float:
        """Time from the first record polled to the last unit acknowledged."""
        if self.first_record_at is None or self.last_ack_at is None:
            return 0.0
        return self.last_ack_at - self.first_record_at

    def events_per_second(self) -> float:
        """Events fully handled per second while there was work."""
        return self.events / self.busy_seconds() if self.busy_seconds() > 0 else 0.0
