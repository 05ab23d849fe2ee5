"""MicroBatcher with LoRA adapters: a batch never mixes adapters, each request gets its own adapter's
vectors, and queries and ingestion of different adapters take turns."""

from __future__ import annotations

import asyncio
import threading

from batcher_fakes import GatedForward, text

from workers.batcher import MicroBatcher
from workers.settings import BatchSettings

OFFSET = {None: 0.0, "legal": 1000.0, "medical": 2000.0}


def adapter_forward(gate: threading.Event | None = None) -> GatedForward:
    """Row ``r`` is ``ids[r][0] + OFFSET[adapter]``; records each batch (adapter, uids); may be gated."""
    return GatedForward(gate, OFFSET)


def make(made: list[MicroBatcher], forward: GatedForward, **overrides: float) -> MicroBatcher:
    values: dict[str, float] = {"max_batch_tokens": 400, "max_wait_ms": 5.0, "sort_window": 64}
    batcher = MicroBatcher(forward, BatchSettings.model_validate(values | overrides), packed=True)
    made.append(batcher)
    return batcher


async def test_requests_of_several_adapters_queued_together_each_get_their_own_adapter(
    batchers: list[MicroBatcher],
) -> None:
    gate = threading.Event()
    forward = adapter_forward(gate)
    batcher = make(batchers, forward)
    # A first request holds the forward thread while the others queue up together.
    first = asyncio.create_task(batcher.submit([text(99, 4)], (4,)))
    await asyncio.to_thread(forward.started.wait, 5)
    plan: list[tuple[str | None, list[int]]] = [
        ("legal", [1, 2, 3]),
        (None, [4, 5]),
        ("medical", [6, 7, 8]),
        ("legal", [9, 10]),
    ]
    tasks = [
        asyncio.create_task(batcher.submit([text(uid, 5 + uid) for uid in uids], (4, 2), adapter=adapter))
        for adapter, uids in plan
    ]
    await asyncio.sleep(0.05)
    gate.set()
    await first
    for (adapter, uids), task in zip(plan, tasks, strict=True):
        out = await task
        expected = [uid + OFFSET[adapter] for uid in uids]
        assert out[4][:, 0].tolist() == expected and out[2][:, 0].tolist() == expected
    # Every batch ran with one adapter and held only that adapter's texts; the queued texts took
    # one batch per adapter (they all fit one budget).
    owner = {uid: adapter for adapter, uids in plan for uid in uids}
    for adapter, uids in forward.adapter_batches()[1:]:
        assert {owner[uid] for uid in uids} == {adapter}
    assert sorted((a or "") for a, _ in forward.adapter_batches()[1:]) == ["", "legal", "medical"]


async def test_queries_and_ingestion_of_different_adapters_take_turns(batchers: list[MicroBatcher]) -> None:
    gate = threading.Event()
    forward = adapter_forward(gate)
    batcher = make(batchers, forward, max_batch_tokens=64, max_wait_ms=0)
    blocker = asyncio.create_task(batcher.submit([text(99, 4)], (4,), adapter="legal"))
    await asyncio.to_thread(forward.started.wait, 5)
    ingestion = asyncio.create_task(batcher.submit([text(1, 8), text(2, 8)], (4,), adapter="medical"))
    queries = [  # two batches' worth
        asyncio.create_task(batcher.submit([text(10 + i, 16)], (4,), priority=True, adapter="legal"))
        for i in range(8)
    ]
    await asyncio.sleep(0.05)
    gate.set()
    await asyncio.gather(blocker, ingestion, *queries)
    # After the blocker: queries lead, then ingestion of the other adapter gets its turn at once,
    # although the remaining queries were waiting; then they run.
    assert forward.adapter_batches()[1:] == [
        ("legal", [10, 11, 12, 13]),
        ("medical", [1, 2]),
        ("legal", [14, 15, 16, 17]),
    ]
    results = [await q for q in queries]
    assert [r[4][0, 0] for r in results] == [1010.0 + i for i in range(8)]


async def test_a_query_stream_of_one_adapter_never_starves_ingestion_of_another(
    batchers: list[MicroBatcher],
) -> None:
    forward = adapter_forward()
    batcher = make(batchers, forward, max_batch_tokens=80, max_wait_ms=0)
    ingestion = asyncio.create_task(
        batcher.submit([text(uid, 40) for uid in range(1, 7)], (4,), adapter="medical")
    )

    async def flood() -> None:
        while not ingestion.done():
            await batcher.submit([text(100, 20)], (4,), priority=True, adapter="legal")

    flooding = [asyncio.create_task(flood()) for _ in range(12)]  # 3 batches' worth waiting
    out = await asyncio.wait_for(ingestion, 10)
    await asyncio.gather(*flooding)
    assert out[4][:, 0].tolist() == [uid + 2000.0 for uid in range(1, 7)]
    for adapter, uids in forward.adapter_batches():
        assert all((uid >= 100) == (adapter == "legal") for uid in uids)
