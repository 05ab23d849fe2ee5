"""`status --watch`: a live terminal view of a running ingestion, refreshed every few seconds.

Each frame shows throughput (events committed per second, from the group's committed offsets),
consumer lag per partition, the embedder pool (size, and per actor tokens/s, utilization =
forward-pass seconds per wall second, queued tokens), rows per replica and the dead-letter count.
It reads what any operator can read (Kafka offsets, the actors' ``stats``, Milvus counts), so it
needs no access to the ``run`` process.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

import ray

from pipeline.ops.status import StatusReport, collect_status
from pipeline.settings import Settings

_CLEAR = "\x1b[2J\x1b[H"


@dataclass
class Frame:
    """One refresh: the status report plus the embedder actors' counters, at ``taken_at``."""

    taken_at: float
    report: StatusReport
    actors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def committed(self) -> int:
        return sum(committed for committed, _ in self.report.lag.values())


def render(settings: Settings, frame: Frame, previous: Frame | None) -> str:
    """The text of one frame; rates are over the time since ``previous`` (none on the first)."""
    elapsed = frame.taken_at - previous.taken_at if previous else 0.0
    lines = [f"embedstream status — {time.strftime('%H:%M:%S')}  (topic {settings.kafka.topic})"]
    if elapsed > 0 and previous is not None:
        rate = (frame.committed - previous.committed) / elapsed
        lines.append(f"throughput  {rate:,.1f} events/s committed")
    else:
        lines.append("throughput  (measuring)")
    lag = frame.report.lag
    lines.append(f"lag         {sum(hw - c for c, hw in lag.values())} total")
    for partition, (committed, hw) in sorted(lag.items()):
        lines.append(
            f"  partition {partition:>3}: lag {hw - committed:>8}  (committed {committed}, end {hw})"
        )
    lines.append(f"dead letters {frame.report.dlq_records if frame.report.dlq_records is not None else '?'}")
    lines.append(f"pool        {len(frame.actors)} embedder actor(s)")
    before = {a.get("actor"): a for a in previous.actors} if previous else {}
    for actor in frame.actors:
        name = actor.get("actor", "?")
        if "error" in actor:
            lines.append(f"  {name}: unavailable ({actor['error']})")
            continue
        last = before.get(name)
        if last is not None and "error" not in last and elapsed > 0:
            tokens = (actor["tokens"] - last["tokens"]) / elapsed
            busy = (actor["forward_seconds"] - last["forward_seconds"]) / elapsed
            rates = f"{tokens:,.0f} tokens/s, utilization {min(1.0, busy):.0%}"
        else:
            rates = "(measuring)"
        lines.append(
            f"  {name} [{actor.get('device', '?')}]: {rates}, queued {actor['queued_tokens']} tokens"
        )
    lines.append(f"milvus      {frame.report.milvus}")
    lines += frame.report.replica_lines()
    return "\n".join(lines)


async def _actor_stats(settings: Settings, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    """The counters of the embedder actors in the namespace, read-only (none when nothing runs there).

    Not through ``EmbedderPool.attach``: that waits up to ``pool.ready_timeout_s`` for an actor that
    is not ready, far longer than a refresh.
    """
    namespace = settings.ray.namespace
    names = sorted(
        (a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == namespace),
        key=lambda name: (len(name), name),
    )
    stats: list[dict[str, Any]] = []
    for name in names:
        if not name.startswith("embedder-"):
            continue
        try:
            handle = ray.get_actor(name, namespace=namespace)
            stats.append(await asyncio.wait_for(handle.stats.remote(), timeout_s))
        except Exception as exc:  # a view reports, it does not crash
            stats.append({"actor": name, "error": f"{type(exc).__name__}: {exc}"})
    return stats


async def watch(
    settings: Settings, interval_s: float, count: int | None = None, out: TextIO | None = None
) -> None:
    """Print a frame every ``interval_s`` seconds, ``count`` times (forever when None)."""
    out = out or sys.stdout
    clear = out.isatty()
    previous: Frame | None = None
    shown = 0
    while count is None or shown < count:
        started = time.monotonic()
        report = await collect_status(settings)
        joined = report.ray.startswith("up") or ray.is_initialized()  # e.g. a driver that joined itself
        actors = await _actor_stats(settings) if joined else []
        frame = Frame(time.monotonic(), report, actors)
        out.write((_CLEAR if clear else "") + render(settings, frame, previous) + "\n\n")
        out.flush()
        previous, shown = frame, shown + 1
        if count is None or shown < count:
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - started)))
