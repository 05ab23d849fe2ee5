"""Where ``bench --end-to-end``'s pipeline phase spends its time, stage by stage.

The consumer times its own stages (:data:`~pipeline.ingest.consumer_stats.STAGES`), the replicas'
writes are timed per collection (:func:`pipeline.milvus.metrics.replica_write_seconds`, this process
only) and the embedder actors time their tokenization and forward passes (their ``stats()``).  Stages
of different units run side by side (units are embedded concurrently, written while the next ones are
embedded), so each figure is the stage's own seconds summed over units, and its share of the busy
time can exceed 100%.  The stage that limits the pipeline is the one whose seconds, divided by the
work it can do at once, come closest to the busy time: for the GPU that is ``forward`` over the
actors; for the consumer's single event loop, ``poll + commit`` and the thread-pool stages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipeline.runtime.embedders import EmbedderBackend

ACTOR_COUNTERS = ("tokenize_seconds", "forward_seconds", "tokens", "batches", "rejected_requests")
"""What the breakdown reads from every embedder actor's ``stats()``."""


async def actor_counters(pool: EmbedderBackend) -> dict[str, float]:
    """:data:`ACTOR_COUNTERS` summed over the pool's actors, as they stand now."""
    totals = dict.fromkeys(ACTOR_COUNTERS, 0.0)
    for stats in await pool.stats():
        for name in ACTOR_COUNTERS:
            totals[name] += float(stats.get(name, 0.0))
    return totals


def difference(after: Mapping[str, float], before: Mapping[str, float]) -> dict[str, float]:
    """``after - before`` key by key (a key missing before counts from 0)."""
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def breakdown(
    busy_seconds: float,
    stage_seconds: Mapping[str, float],
    replica_seconds: Mapping[str, float] | None,
    actors: Mapping[str, float],
    pool_size: int,
    cpu_seconds: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """The JSON-ready breakdown: each stage's seconds and share of ``busy_seconds``.

    ``cpu_seconds`` (:attr:`~pipeline.ingest.consumer_stats.ConsumerStats.cpu_seconds`) adds the
    consumer threads' CPU time beside the wall time of the same work: ``build`` against ``parse +
    chunk``, ``write`` against ``write``.
    ``replica_seconds`` is None when the consumers ran in other processes (consumer actors): their
    per-replica times are not visible here.  ``forward_busy`` is the actors' forward seconds over the busy
    time and the actors: 1.0 means every actor ran a forward pass the whole time."""
    busy = max(busy_seconds, 1e-9)
    stages = {name: {"seconds": s, "share": s / busy} for name, s in sorted(stage_seconds.items())}
    result: dict[str, Any] = {"busy_seconds": busy_seconds, "consumer": stages}
    if cpu_seconds:
        wall = {
            "build": stage_seconds.get("parse", 0.0) + stage_seconds.get("chunk", 0.0),
            "write": stage_seconds.get("write", 0.0),
        }
        result["consumer_cpu"] = {
            work: {
                "cpu_seconds": s,
                "wall_seconds": wall.get(work),
                "cpu_share": s / wall[work] if wall.get(work) else None,
            }
            for work, s in sorted(cpu_seconds.items())
        }
    if replica_seconds is not None:
        result["replicas"] = {
            name: {"seconds": s, "share": s / busy} for name, s in sorted(replica_seconds.items())
        }
    result["actors"] = {
        "tokenize_seconds": actors.get("tokenize_seconds", 0.0),
        "forward_seconds": actors.get("forward_seconds", 0.0),
        "tokens": int(actors.get("tokens", 0.0)),
        "batches": int(actors.get("batches", 0.0)),
        # Requests an actor refused with Backpressure (its queue full): each came back later, sent and
        # tokenized again.
        "rejected_requests": int(actors.get("rejected_requests", 0.0)),
        "forward_busy": actors.get("forward_seconds", 0.0) / (busy * max(1, pool_size)),
    }
    return result


def render(result: Mapping[str, Any]) -> str:
    """A few lines for the terminal: the stages by share of the busy time, largest first."""
    rows = [(name, figure) for name, figure in result["consumer"].items()]
    rows += [(f"write {name}", figure) for name, figure in result.get("replicas", {}).items()]
    actors = result["actors"]
    lines = [f"  where the {result['busy_seconds']:.1f} busy seconds went (stages overlap):"]
    for name, figure in sorted(rows, key=lambda row: -row[1]["seconds"]):
        lines.append(f"    {name:<28} {figure['seconds']:>8.1f} s  {figure['share']:>7.1%}")
    for work, figure in result.get("consumer_cpu", {}).items():
        share = "" if figure["cpu_share"] is None else f" ({figure['cpu_share']:.0%} of its wall time)"
        lines.append(f"    {f'consumer {work} threads: CPU':<28} {figure['cpu_seconds']:>8.1f} s{share}")
    lines.append(
        f"    {'actors: tokenize':<28} {actors['tokenize_seconds']:>8.1f} s\n"
        f"    {'actors: forward passes':<28} {actors['forward_seconds']:>8.1f} s  "
        f"(model busy {actors['forward_busy']:.1%} of the busy time)\n"
        f"    {'actors: requests refused':<28} {actors['rejected_requests']:>8d}   (queue full, sent again)"
    )
    return "\n".join(lines)
