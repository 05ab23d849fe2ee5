"""Ray for the Ray tests of the workers package: a private local instance per test module."""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator

import pytest

# One token for every Ray this process starts: the driver caches the first token it loads.
_TOKEN = secrets.token_hex(32)


@pytest.fixture(scope="module")
def ray_namespace() -> Iterator[str]:
    """A fresh namespace on a Ray this process is connected to; yields its name.

    Starts a private local Ray (2 CPUs, no dashboard) for the module and shuts it down afterwards,
    so that other test directories can start their own; when this process is already a driver of
    some Ray (another fixture's), uses that one and leaves it running.

    Unless ``RAY_AUTH_MODE`` says otherwise, Ray 2.60 turns token authentication on for a new local
    cluster; the token it then needs comes from the environment here, so nothing is written to
    ``~/.ray/auth_token``.  (Setting ``RAY_AUTH_MODE`` here would come too late: Ray reads it when
    first imported.)  The environment is restored afterwards.
    """
    import ray

    namespace = f"embedstream-test-{uuid.uuid4().hex[:8]}"
    if ray.is_initialized():
        yield namespace
        return
    saved = {name: os.environ.get(name) for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ["RAY_AUTH_TOKEN"] = _TOKEN
    # "local": a new private instance even when a developer's `ray start` head is running.
    ray.init(address="local", num_cpus=2, include_dashboard=False, namespace=namespace, log_to_driver=False)
    try:
        yield namespace
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
