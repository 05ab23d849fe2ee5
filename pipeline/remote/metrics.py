"""Metrics of the remote embedder backend, recorded with ``ray.util.metrics`` like the actors' own.

Exported as ``ray_ingest_remote_*`` by the metrics agent of the process's Ray node (a process that
has not joined Ray records nothing).  Tags: the Ray namespace, and the outcome of a request try —
one of :data:`OUTCOMES`, a fixed set.
"""

from __future__ import annotations

from workers.metrics import MetricSpec

OUTCOMES = ("ok", "timeout", "unavailable", "throttled", "server_error", "malformed", "rejected")
"""Every value of the ``outcome`` tag: how one HTTP try ended."""

REQUESTS = MetricSpec(
    "ingest_remote_requests_total",
    "counter",
    "HTTP tries to the remote embeddings endpoint, by outcome (ok, timeout, unavailable: refused or "
    "dropped connection, throttled: 429, server_error: 5xx, malformed: a 200 that was refused, rejected: "
    "400/413/422).",
    ("namespace", "outcome"),
)
REQUEST_SECONDS = MetricSpec(
    "ingest_remote_request_seconds",
    "histogram",
    "Duration of one successful HTTP request to the remote embeddings endpoint.",
    ("namespace",),
    (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
REQUEST_TOKENS = MetricSpec(
    "ingest_remote_request_tokens",
    "histogram",
    "Tokens (special ones included, counted here) in one request to the remote endpoint.",
    ("namespace",),
    (64, 256, 1024, 2048, 4096, 8192, 16384, 32768, 65536),
)
TOKENS_EMBEDDED = MetricSpec(
    "ingest_remote_tokens_embedded_total",
    "counter",
    "Tokens embedded by the remote endpoint (counted here).",
    ("namespace",),
)
INFLIGHT = MetricSpec(
    "ingest_remote_inflight_requests", "gauge", "Requests in flight to the remote endpoint.", ("namespace",)
)
WAITING = MetricSpec(
    "ingest_remote_waiting_requests",
    "gauge",
    "Requests waiting for a free slot (embedder.concurrent_requests) to the remote endpoint.",
    ("namespace",),
)

SPECS: tuple[MetricSpec, ...] = (
    REQUESTS,
    REQUEST_SECONDS,
    REQUEST_TOKENS,
    TOKENS_EMBEDDED,
    INFLIGHT,
    WAITING,
)
"""Every metric the remote backend records."""


class RemoteMetrics:
    """The remote backend's metrics with the namespace tag bound."""

    def __init__(self, namespace: str) -> None:
        self._tags = {"namespace": namespace}
        self._requests = REQUESTS.counter()
        self._seconds = REQUEST_SECONDS.histogram()
        self._request_tokens = REQUEST_TOKENS.histogram()
        self._tokens = TOKENS_EMBEDDED.counter()
        self._inflight = INFLIGHT.gauge()
        self._waiting = WAITING.gauge()
        self._inflight.set(0, tags=self._tags)
        self._waiting.set(0, tags=self._tags)

    def tried(self, outcome: str) -> None:
        """One HTTP try ended with ``outcome`` (one of :data:`OUTCOMES`)."""
        self._requests.inc(1, tags=self._tags | {"outcome": outcome})

    def answered(self, tokens: int, seconds: float) -> None:
        """A request of ``tokens`` tokens was answered well in ``seconds``."""
        self._seconds.observe(seconds, tags=self._tags)
        self._request_tokens.observe(tokens, tags=self._tags)
        self._tokens.inc(tokens, tags=self._tags)

    def load(self, inflight: int, waiting: int) -> None:
        """Requests in flight and waiting right now."""
        self._inflight.set(inflight, tags=self._tags)
        self._waiting.set(waiting, tags=self._tags)
