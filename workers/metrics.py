"""Embedder-side metrics, recorded with ``ray.util.metrics`` and exported by Ray's metrics agent.

Ray prefixes every name with ``ray_`` on its Prometheus endpoint (each node's
``metrics_export_port``), so ``ingest_batch_tokens`` is scraped as ``ray_ingest_batch_tokens``.
Every series is tagged with the Ray namespace of the worker and the actor's name
(``embedder-0`` ...), so several workers can share one cluster and one Grafana.

Recording is cheap and never raises; outside a Ray worker it is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ray.util.metrics import Counter, Gauge, Histogram

MetricKind = Literal["counter", "gauge", "histogram"]


@dataclass(frozen=True)
class MetricSpec:
    """One metric as defined in code: its name without Ray's ``ray_`` prefix, kind and tags."""

    name: str
    kind: MetricKind
    description: str
    tag_keys: tuple[str, ...]
    boundaries: tuple[float, ...] = ()

    def counter(self) -> Counter:
        """The ``ray.util.metrics`` counter of this spec."""
        assert self.kind == "counter", self.name
        return Counter(self.name, description=self.description, tag_keys=self.tag_keys)

    def gauge(self) -> Gauge:
        """The ``ray.util.metrics`` gauge of this spec."""
        assert self.kind == "gauge", self.name
        return Gauge(self.name, description=self.description, tag_keys=self.tag_keys)

    def histogram(self) -> Histogram:
        """The ``ray.util.metrics`` histogram of this spec."""
        assert self.kind == "histogram", self.name
        return Histogram(
            self.name, description=self.description, boundaries=list(self.boundaries), tag_keys=self.tag_keys
        )

    def exported_names(self) -> tuple[str, ...]:
        """The series names Prometheus sees (histograms export ``_bucket``, ``_count`` and ``_sum``)."""
        base = f"ray_{self.name}"
        if self.kind == "histogram":
            return (f"{base}_bucket", f"{base}_count", f"{base}_sum")
        return (base,)


_ACTOR_TAGS = ("namespace", "actor")

BATCH_TOKENS = MetricSpec(
    "ingest_batch_tokens",
    "histogram",
    "Real (unpadded) tokens in one forward pass.",
    _ACTOR_TAGS,
    (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536),
)
BATCH_FILL = MetricSpec(
    "ingest_batch_fill_ratio",
    "histogram",
    "Computed tokens (padding included) of one forward pass over the batch token budget.",
    _ACTOR_TAGS,
    (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
EMBED_SECONDS = MetricSpec(
    "ingest_embed_seconds",
    "histogram",
    "Duration of one forward pass (tokens in, cut and normalized vectors out) on one embedder actor.",
    _ACTOR_TAGS,
    (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
TOKENS_EMBEDDED = MetricSpec(
    "ingest_tokens_embedded_total", "counter", "Real tokens embedded by an embedder actor.", _ACTOR_TAGS
)
QUEUE_TOKENS = MetricSpec(
    "ingest_queue_depth_tokens",
    "gauge",
    "Tokens waiting in an embedder actor's micro-batcher queue.",
    _ACTOR_TAGS,
)
INFLIGHT_REQUESTS = MetricSpec(
    "ingest_inflight_requests",
    "gauge",
    "Embed calls an embedder actor has accepted and not answered yet.",
    _ACTOR_TAGS,
)
PENDING_REQUESTS = MetricSpec(
    "ingest_pending_requests",
    "gauge",
    "Ingestion calls an embedder actor holds before its queue: being tokenized, or tokenized and waiting "
    "for room while the queue is full (at most batching.max_pending_requests).",
    _ACTOR_TAGS,
)
ACTOR_RESTARTS = MetricSpec(
    "ingest_actor_restarts_total",
    "counter",
    "Times Ray restarted an embedder actor after it died (counted by the restarted actor).",
    _ACTOR_TAGS,
)

FORWARD_FAILURES = MetricSpec(
    "ingest_forward_failures_total",
    "counter",
    "Failed forward passes of an embedder actor, by cause (oom: out of device memory; error: any other "
    "error of the model) and outcome (split: the batch was split and retried in halves; alone: it held "
    "one text, which is failed and named to the caller).",
    (*_ACTOR_TAGS, "cause", "outcome"),
)
BATCH_BUDGET = MetricSpec(
    "ingest_batch_budget_tokens",
    "gauge",
    "Token budget an embedder actor cuts batches to now: max_batch_tokens, lowered after an out-of-memory.",
    _ACTOR_TAGS,
)

SPECS: tuple[MetricSpec, ...] = (
    BATCH_TOKENS,
    BATCH_FILL,
    EMBED_SECONDS,
    TOKENS_EMBEDDED,
    QUEUE_TOKENS,
    INFLIGHT_REQUESTS,
    PENDING_REQUESTS,
    ACTOR_RESTARTS,
    FORWARD_FAILURES,
    BATCH_BUDGET,
)
"""Every metric an embedder actor records."""


class ActorMetrics:
    """The metrics of one embedder actor, with its tags bound."""

    def __init__(self, namespace: str, actor: str, batch_budget: int) -> None:
        self._tags = {"namespace": namespace, "actor": actor}
        self._budget = batch_budget
        self._batch_tokens = BATCH_TOKENS.histogram()
        self._fill = BATCH_FILL.histogram()
        self._seconds = EMBED_SECONDS.histogram()
        self._tokens = TOKENS_EMBEDDED.counter()
        self._queue = QUEUE_TOKENS.gauge()
        self._inflight = INFLIGHT_REQUESTS.gauge()
        self._pending = PENDING_REQUESTS.gauge()
        self._restarts = ACTOR_RESTARTS.counter()
        self._failures = FORWARD_FAILURES.counter()
        self._budget_gauge = BATCH_BUDGET.gauge()
        # Series appear on the endpoint only once recorded: start every one at its resting value.
        self._queue.set(0, tags=self._tags)
        self._inflight.set(0, tags=self._tags)
        self._pending.set(0, tags=self._tags)
        self._budget_gauge.set(batch_budget, tags=self._tags)

    def batch(self, tokens: int, padded: int, seconds: float) -> None:
        """One forward pass finished: ``tokens`` real, ``padded`` computed, in ``seconds``."""
        self._batch_tokens.observe(tokens, tags=self._tags)
        self._fill.observe(min(1.0, padded / self._budget), tags=self._tags)
        self._seconds.observe(seconds, tags=self._tags)
        self._tokens.inc(tokens, tags=self._tags)

    def load(self, queued_tokens: int, inflight_requests: int, pending_requests: int) -> None:
        """The actor's queue depth, calls in flight and calls pending before its queue right now."""
        self._queue.set(queued_tokens, tags=self._tags)
        self._inflight.set(inflight_requests, tags=self._tags)
        self._pending.set(pending_requests, tags=self._tags)

    def forward_failed(self, cause: str, alone: bool, budget: int) -> None:
        """A forward pass failed (``cause`` "oom" or "error"); ``budget`` is the batch budget from now on."""
        self._failures.inc(1, tags=self._tags | {"cause": cause, "outcome": "alone" if alone else "split"})
        self._budget_gauge.set(budget, tags=self._tags)

    def restarted(self) -> None:
        """This actor is a restart of one that died."""
        self._restarts.inc(1, tags=self._tags)
