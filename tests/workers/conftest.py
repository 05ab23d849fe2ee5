"""Ray for the Ray tests of the workers package: the session's cluster (tests/conftest.py)."""

from __future__ import annotations

import uuid

import pytest


@pytest.fixture(scope="module")
def ray_namespace(ray_session: None) -> str:
    """A fresh namespace on the session's Ray cluster, so each module's named actors stay apart."""
    return f"embedstream-test-{uuid.uuid4().hex[:8]}"
