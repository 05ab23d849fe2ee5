"""Fixtures of the fault-injection suite: real broker, Milvus and Ray (tests/conftest.py) per session.

The oracle and the comparer are in :mod:`oracle`; settings and the worker process in
:mod:`harness`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import fault_settings

from pipeline.milvus.sink import MilvusSink
from pipeline.settings import Settings


@pytest.fixture
def make_settings(kafka_bootstrap: str, minilm_path: Path) -> Callable[..., Settings]:
    """``make_settings(milvus_uri, **sections)``: :func:`~harness.fault_settings`, session broker."""

    def make(milvus_uri: str, **sections: Any) -> Settings:
        return fault_settings(kafka_bootstrap, milvus_uri, minilm_path, **sections)

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
