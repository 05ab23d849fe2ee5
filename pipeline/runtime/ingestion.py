"""`run`: the ingestion process, consuming in this process or through consumer actors, until stopped."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Coroutine
from typing import Any

from pipeline.ingest.consumer import ConsumerStats
from pipeline.remote.startup import check_remote_settings
from pipeline.runtime.assemble import build_runtime
from pipeline.runtime.autoscale import start_autoscaler
from pipeline.runtime.consumer_actors import run_consumer_actors, start_consumer_actors
from pipeline.runtime.run_summary import GroupStats, describe_run
from pipeline.settings import Settings

log = logging.getLogger("pipeline")


async def run_ingestion(
    settings: Settings,
    until_idle: float | None = None,
    consumer_actors: int | None = None,
    *,
    base: Settings | None = None,
    adopt: bool = False,
) -> int:
    """Consume until SIGINT/SIGTERM (or idle for ``until_idle`` s), in this process or as
    ``consumer_actors`` Ray actors (default ``scaling.consumer_actors``); returns the exit code.
    ``settings`` name the version written, ``base`` and ``adopt`` are :func:`build_runtime`'s.

    First signal: finish the units in flight and commit; second: stop at once (exit 130).
    """
    members = settings.scaling.consumer_actors if consumer_actors is None else consumer_actors
    check_remote_settings(settings)  # before anything starts
    runtime = await build_runtime(settings, base=base, adopt=adopt)
    stop = asyncio.Event()
    consumers: list[Any] = []
    consuming: Coroutine[Any, Any, ConsumerStats | GroupStats]
    if members:
        consumers = start_consumer_actors(runtime, members)
        consuming = run_consumer_actors(runtime, members, stop, until_idle, consumers)
    else:
        consuming = runtime.new_consumer().run(stop=stop, until_idle_s=until_idle)
    running: asyncio.Task[ConsumerStats | GroupStats] = asyncio.create_task(consuming)
    scaling = None
    if settings.scaling.autoscale:
        scaling = start_autoscaler(runtime, consumers, running)

    def on_signal() -> None:
        # First signal: finish the units in flight and commit. Second: stop at once.
        if stop.is_set():
            running.cancel()
        else:
            log.info("stopping: finishing the work in flight (signal again to stop at once)")
            stop.set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        stats = await running
    except asyncio.CancelledError:
        print("stopped at once; uncommitted work will be re-read on restart", file=sys.stderr)
        return 130
    finally:
        if scaling is not None:
            scaling.cancel()
            await asyncio.gather(scaling, return_exceptions=True)  # its failure was reported already
        runtime.close()
    print(describe_run(stats))
    return 0
