"""Fixtures of the workers package's tests: Ray (the session's cluster, tests/conftest.py) and
micro-batchers closed after each test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from workers.batcher import MicroBatcher


@pytest.fixture(scope="module")
def ray_namespace(ray_session: None) -> str:
    """A fresh namespace on the session's Ray cluster, so each module's named actors stay apart."""
    return f"embedstream-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def batchers() -> AsyncIterator[list[MicroBatcher]]:
    """A list the test appends its MicroBatchers to; each is closed when the test ends."""
    made: list[MicroBatcher] = []
    yield made
    for batcher in made:
        await batcher.close()
