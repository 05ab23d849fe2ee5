"""Loading replicas: started side by side, polled until loaded, bounded by the wait, progress logged.

A scripted connection stands in for Milvus: it answers ``get_load_state`` from a list of states per
collection.  The sink's tests load real collections on Milvus Lite and Milvus standalone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from pymilvus.client.types import LoadState

import pipeline.milvus.loading as loading
from pipeline.milvus.errors import SinkUnavailable
from pipeline.milvus.loading import load_collections


class ScriptedMilvus:
    """``call`` as MilvusConnection's: records every call, answers load states from a script."""

    def __init__(self, states: dict[str, list[tuple[LoadState, int]]]) -> None:
        self._states: dict[str, Iterator[tuple[LoadState, int]]] = {
            name: iter(script) for name, script in states.items()
        }
        self._last: dict[str, tuple[LoadState, int]] = {}
        self.calls: list[tuple[str, str]] = []

    def call(self, what: str, method: str, name: str, **kwargs: Any) -> Any:
        self.calls.append((method, name))
        if method == "load_collection":
            assert kwargs == {"_async": True}, "a load must not block: the wait is polled"
            return None
        assert method == "get_load_state"
        state, progress = self._last[name] = next(
            self._states[name], self._last.get(name, (LoadState.Loaded, 100))
        )
        return {"state": state, "progress": progress} if state == LoadState.Loading else {"state": state}

    def loads(self, name: str) -> int:
        return self.calls.count(("load_collection", name))


@pytest.fixture(autouse=True)
def fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loading, "_POLL_S", 0.01)


def test_every_load_starts_before_any_wait_and_returns_once_all_are_loaded() -> None:
    milvus = ScriptedMilvus(
        {
            "a": [(LoadState.Loading, 10), (LoadState.Loading, 60), (LoadState.Loaded, 100)],
            "b": [(LoadState.Loading, 0), (LoadState.Loaded, 100)],
        }
    )
    load_collections(milvus, ["a", "b"], wait_s=5.0)  # type: ignore[arg-type]
    assert milvus.calls[:2] == [("load_collection", "a"), ("load_collection", "b")]
    # a is polled until loaded (3 times), b until loaded (twice) and never again after.
    assert milvus.calls[2:].count(("get_load_state", "a")) == 3
    assert milvus.calls[2:].count(("get_load_state", "b")) == 2
    assert milvus.loads("a") == milvus.loads("b") == 1


def test_a_load_still_running_at_the_end_of_the_wait_is_retriable_and_named() -> None:
    milvus = ScriptedMilvus({"a": [(LoadState.Loaded, 100)], "b": [(LoadState.Loading, 42)]})
    with pytest.raises(SinkUnavailable, match=r"still loading b \(42%\) after 0.2 s") as raised:
        load_collections(milvus, ["a", "b"], wait_s=0.2)  # type: ignore[arg-type]
    assert raised.value.retriable
    assert "a (" not in str(raised.value)
    assert milvus.calls.count(("get_load_state", "b")) > 2, "it polled b more than once before giving up"


def test_a_collection_released_while_waiting_is_loaded_again() -> None:
    milvus = ScriptedMilvus({"a": [(LoadState.Loading, 50), (LoadState.NotLoad, 0), (LoadState.Loaded, 100)]})
    load_collections(milvus, ["a"], wait_s=5.0)  # type: ignore[arg-type]
    assert milvus.loads("a") == 2


def test_a_long_wait_logs_the_progress(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(loading, "_PROGRESS_EVERY_S", 0.05)
    milvus = ScriptedMilvus({"a": [(LoadState.Loading, 30)] * 20 + [(LoadState.Loaded, 100)]})
    with caplog.at_level(logging.INFO, logger=loading.__name__):
        load_collections(milvus, ["a"], wait_s=30.0)  # type: ignore[arg-type]
    assert any("waiting for Milvus to load a (30%)" in record.getMessage() for record in caplog.records)


def test_a_server_that_stops_answering_fails_the_poll_at_once() -> None:
    class Unanswering(ScriptedMilvus):
        def call(self, what: str, method: str, name: str, **kwargs: Any) -> Any:
            if method == "get_load_state":
                raise SinkUnavailable(f"Milvus unavailable while {what}")
            return super().call(what, method, name, **kwargs)

    milvus = Unanswering({"a": []})
    with pytest.raises(SinkUnavailable, match="reading the load state of a"):
        load_collections(milvus, ["a"], wait_s=600.0)  # type: ignore[arg-type]
