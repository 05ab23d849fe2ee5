"""An aiohttp application served on a free port of this host, for the tests of the HTTP API."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from aiohttp import web


@contextlib.asynccontextmanager
async def serving(app: web.Application | web.AppRunner) -> AsyncIterator[str]:
    """Serve ``app`` (or the app of a runner not set up yet, such as ``Api.runner()``) on a free port
    of 127.0.0.1; yields its base URL ``http://127.0.0.1:PORT`` and cleans the runner up after."""
    runner = app if isinstance(app, web.AppRunner) else web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
