"""The micro-batcher's query lane: queries jump the ingestion backlog, ingestion still progresses."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from batcher_fakes import GatedForward, text

from workers.batcher import MicroBatcher
from workers.errors import Backpressure
from workers.settings import BatchSettings

QUERY = 1_000_000  # query uids start here, ingestion uids below


def make(made: list[MicroBatcher], forward: GatedForward, **overrides: float) -> MicroBatcher:
    values: dict[str, float] = {"max_batch_tokens": 200, "max_wait_ms": 5.0, "priority_share": 0.5}
    values |= overrides
    batcher = MicroBatcher(forward, BatchSettings.model_validate(values), packed=True)
    made.append(batcher)
    return batcher


async def test_ingestion_progresses_under_a_query_flood(batchers: list[MicroBatcher]) -> None:
    gate = threading.Event()
    forward = GatedForward(gate)
    batcher = make(batchers, forward)
    blocker = asyncio.create_task(batcher.submit([text(0, 200)], (4,)))
    await asyncio.to_thread(forward.started.wait, 5)
    # 40 queries of 20 tokens (four batches' worth) and 10 ingestion texts of 50 tokens wait together.
    queries = [
        asyncio.create_task(batcher.submit([text(QUERY + q, 20)], (4,), priority=True)) for q in range(40)
    ]
    ingestion = asyncio.create_task(batcher.submit([text(uid, 50) for uid in range(1, 11)], (4,)))
    await asyncio.sleep(0.01)
    gate.set()
    out = await ingestion
    assert out[4][:, 0].tolist() == list(range(1, 11))
    await asyncio.gather(blocker, *queries)
    # Every batch while ingestion waited held 5 queries (half the budget) and 2 ingestion texts.
    for batch in forward.batches[1:6]:
        assert sorted(uid >= QUERY for uid in batch) == [False] * 2 + [True] * 5, batch
    # Ingestion finished in batch 5 of 9: the rest of the flood came after it.
    assert forward.batch_of(10) == 5 < forward.batch_of(QUERY + 39)
    assert all(uid >= QUERY for batch in forward.batches[6:] for uid in batch)


async def test_a_query_is_not_stuck_behind_the_ingestion_backlog(batchers: list[MicroBatcher]) -> None:
    gate = threading.Event()
    forward = GatedForward(gate)
    batcher = make(batchers, forward, max_queued_tokens=100_000)
    backlog = asyncio.create_task(batcher.submit([text(uid, 50) for uid in range(1, 1001)], (4,)))
    await asyncio.to_thread(forward.started.wait, 5)  # batch 0 is on the device; 250 batches' worth wait
    query = asyncio.create_task(batcher.submit([text(QUERY, 20)], (4,), priority=True))
    await asyncio.sleep(0.01)
    gate.set()
    assert (await query)[4][0, 0] == QUERY
    assert forward.batch_of(QUERY) == 1  # the very next batch, ahead of 249 batches of ingestion
    await backlog
    assert sum(len(batch) for batch in forward.batches) == 1001


async def test_a_query_does_not_wait_for_the_batch_to_fill(batchers: list[MicroBatcher]) -> None:
    forward = GatedForward()
    batcher = make(batchers, forward, max_wait_ms=20_000)
    started = time.monotonic()
    await batcher.submit([text(QUERY, 10)], (4,), priority=True)
    assert time.monotonic() - started < 10  # an ingestion text alone would wait the full 20 s


async def test_the_query_lane_is_bounded_apart_from_ingestion(batchers: list[MicroBatcher]) -> None:
    gate = threading.Event()
    forward = GatedForward(gate)
    batcher = make(batchers, forward, max_priority_tokens=100, max_queued_tokens=1000)
    blocker = asyncio.create_task(batcher.submit([text(0, 200)], (4,)))
    await asyncio.to_thread(forward.started.wait, 5)
    waiting = asyncio.create_task(batcher.submit([text(QUERY, 60)], (4,), priority=True))
    await asyncio.sleep(0)
    with pytest.raises(Backpressure, match="query lane") as refused:
        await batcher.submit([text(QUERY + 1, 41)], (4,), priority=True)
    assert refused.value.retry_after > 0
    ingestion = asyncio.create_task(batcher.submit([text(1, 500)], (4,)))  # its own bound still has room
    await asyncio.sleep(0)
    assert batcher.stats().queued_tokens == 560
    gate.set()
    await asyncio.gather(blocker, waiting, ingestion)
    assert batcher.stats().rejected_requests == 1


def test_queries_get_the_instruction_only_on_instruction_aware_models() -> None:
    from workers.prompts import format_query
    from workers.settings import ModelSettings

    model = ModelSettings()
    assert format_query(model, "qwen3", "what is ls", "find man pages") == (
        "Instruct: find man pages\nQuery:what is ls"
    )
    assert format_query(model, "qwen3", "what is ls", None) == "what is ls"
    assert format_query(model, "bert", "what is ls", "find man pages") == "what is ls"
