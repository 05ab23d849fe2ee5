"""Counters of a micro-batcher's forward passes, and the snapshot it reports.

:class:`ForwardCounters` keeps totals since the batcher was created: successful forward passes are
counted in ``batches``, ``texts``, ``tokens`` …, failed ones only in ``failed`` (and in the splits or
failed texts they led to: see :mod:`workers.batcher`); the throughput is
smoothed over successful passes and is what the batcher's retry hints are computed from.
:class:`BatcherStats` is the immutable snapshot of those totals plus the queue's.
"""

from __future__ import annotations

from dataclasses import dataclass

_RATE_SMOOTHING = 0.2


@dataclass(frozen=True)
class BatcherStats:
    """A snapshot of one batcher's counters (totals since it was created; failed batches counted apart)."""

    queued_texts: int
    queued_tokens: int
    batches: int
    texts: int
    tokens: int
    padded_tokens: int
    """Tokens the forward passes computed, padding included (equal to ``tokens`` when packed)."""
    failed_batches: int
    oom_splits: int
    """Batches split in halves after running out of memory."""
    error_splits: int
    """Batches split in halves after another error of the model."""
    failed_texts: int
    """Texts the model failed on when run alone (each fails its request with FailedInputs)."""
    batch_budget: int
    """The token budget batches are cut to now (lowered after an out-of-memory)."""
    rejected_requests: int
    waiting_for_room: int
    """Ingestion requests waiting for room in the full queue (``submit(..., wait_for_room=True)``)."""
    forward_seconds: float
    mean_fill: float
    """Mean of ``padded tokens / max_batch_tokens`` over batches (capped at 1 per batch)."""
    padding_efficiency: float
    """``tokens / padded_tokens``: 1.0 means no padding at all."""
    tokens_per_second: float
    """Smoothed throughput of the forward passes (real tokens per second of forward time)."""


class ForwardCounters:
    """Totals of the forward passes of one batcher (see the module docstring)."""

    def __init__(self, max_batch_tokens: int) -> None:
        self._max_batch_tokens = max_batch_tokens
        self.batches = self.texts = self.tokens = self.padded = 0
        self.failed = 0
        self.splits = {"oom": 0, "error": 0}
        self.failed_texts = 0
        self.forward_s = self.fill_sum = 0.0
        self.rate = 0.0
        """Smoothed tokens per second of forward time (0 until a pass has been measured)."""

    def record(self, texts: int, tokens: int, padded: int, elapsed: float) -> None:
        """Count one successful forward pass over ``texts`` texts that took ``elapsed`` seconds."""
        self.batches += 1
        self.texts += texts
        self.tokens += tokens
        self.padded += padded
        self.forward_s += elapsed
        self.fill_sum += min(1.0, padded / self._max_batch_tokens)
        if elapsed > 0:
            rate = tokens / elapsed
            self.rate = rate if not self.rate else self.rate + _RATE_SMOOTHING * (rate - self.rate)

    def snapshot(
        self, queued_texts: int, queued_tokens: int, rejected: int, waiting: int, budget: int
    ) -> BatcherStats:
        return BatcherStats(
            queued_texts=queued_texts,
            queued_tokens=queued_tokens,
            batches=self.batches,
            texts=self.texts,
            tokens=self.tokens,
            padded_tokens=self.padded,
            failed_batches=self.failed,
            oom_splits=self.splits["oom"],
            error_splits=self.splits["error"],
            failed_texts=self.failed_texts,
            batch_budget=budget,
            rejected_requests=rejected,
            waiting_for_room=waiting,
            forward_seconds=self.forward_s,
            mean_fill=self.fill_sum / self.batches if self.batches else 0.0,
            padding_efficiency=self.tokens / self.padded if self.padded else 1.0,
            tokens_per_second=self.rate,
        )
