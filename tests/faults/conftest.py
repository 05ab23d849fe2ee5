"""Fixtures of the fault-injection suite: real broker, Milvus and Ray (tests/conftest.py) per session.

The oracle and the comparer are in tests/helpers/oracle.py, Kafka reads and writes in
tests/helpers/kafka_io.py; the mixed stream of scenarios 1-4 in :mod:`streams` and the worker
process in :mod:`harness`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.settings import private_settings

from pipeline.milvus.sink import MilvusSink
from pipeline.settings import Settings

# What the worker-fault scenarios run with besides a private topic: short group timeouts (a SIGKILLed
# member is evicted after 3 s instead of 10 s, so a restarted worker gets its partitions back
# quickly), MiniLM on one actor of one CPU, one replica of 128 besides MiniLM's native 384.
FAULT_OPTIONS: dict[str, Any] = {
    "name": "faults",
    "kafka": {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500},
    "pool": {"cpus_per_actor": 1.0, "detached": False},
    "consumer": {"max_batch_events": 64, "retry_backoff_max_s": 4.0},
    "dims": (128,),
    "max_tokens": 64,
}


@pytest.fixture
def make_settings(kafka_bootstrap: str, minilm_path: Path) -> Callable[..., Settings]:
    """``make_settings(milvus_uri, bootstrap=None, model_path=None, **options)``: the
    :func:`~helpers.settings.private_settings` of a fault scenario (the session broker and MiniLM
    unless named); each option replaces that of :data:`FAULT_OPTIONS`."""

    def make(
        milvus_uri: str, *, bootstrap: str | None = None, model_path: Path | None = None, **options: Any
    ) -> Settings:
        return private_settings(
            bootstrap or kafka_bootstrap, milvus_uri, model_path or minilm_path, **(FAULT_OPTIONS | options)
        )

    return make


@pytest.fixture
def open_sink() -> Iterator[Callable[[Settings], MilvusSink]]:
    """A reader of the replicas of some settings (384 and 128), closed after the test."""
    sinks: list[MilvusSink] = []

    def make(settings: Settings) -> MilvusSink:
        sink = MilvusSink(settings.milvus, settings.replicas.replica_dims(384))
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close()
