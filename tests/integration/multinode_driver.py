"""Driver process of test_multinode: the worker with consumer actors on the cluster of RAY_ADDRESS.

Settings come from the environment (PIPELINE_*).  Prints one JSON line: the run's counters, each
consumer's events and busy time (first record polled to last unit acknowledged, on its own clock),
the busiest consumer's busy time, and the node of every embedder and consumer actor it ran.  There is
no group-wide events/s: no one measured when the group as a whole started and finished.
"""

from __future__ import annotations

import asyncio
import json
import sys

import ray
from ray.util.state import list_actors

from pipeline.runtime.assemble import build_runtime
from pipeline.runtime.consumer_actors import run_consumer_actors
from pipeline.settings import load_settings


async def main(consumers: int) -> None:
    settings = load_settings()
    runtime = await build_runtime(settings)
    try:
        stats = await run_consumer_actors(runtime, consumers, asyncio.Event(), until_idle_s=3.0)
        placement = {
            actor.name: actor.node_id
            for actor in list_actors(
                address=settings.ray.address,
                filters=[("ray_namespace", "=", settings.ray.namespace)],
                limit=1000,
            )
            if actor.name
        }
    finally:
        runtime.close()
    result = {
        "events": stats.events,
        "chunks": stats.chunks_written,
        "members": [
            {
                "events": m.events,
                "busy_seconds": m.busy_seconds(),
                "events_per_busy_second": m.events_per_second(),
            }
            for m in stats.members
        ],
        "busiest_member_busy_seconds": stats.busiest_member_seconds(),
        "nodes": len([n for n in ray.nodes() if n["Alive"]]),
        "placement": placement,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
