"""An actor whose queue is full keeps ingestion requests waiting for room instead of refusing them.

A refused request comes back from its caller after ``retry_after`` and is sent and tokenized again, so
every refusal repeats the request's tokenization and transfer.  The actor's batching half
(:class:`~workers.actor_base.ModelActor`) runs here in-process, on a gated fake forward pass and a
counting tokenizer: what is checked is who gets refused, who waits, and how often each request was
tokenized.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence

import pytest

from tests.workers.batcher_fakes import GatedForward, text
from workers.actor_base import ModelActor
from workers.errors import Backpressure, EmbedderUnavailable
from workers.settings import BatchSettings

DIMS = (4,)
TOKENS = 64  # per request: one text of 64 tokens (the least max_batch_tokens takes)


class GatedActor(ModelActor):
    """The batching half of an actor over a :class:`GatedForward` (no model, no Ray)."""

    def __init__(self, settings: BatchSettings, gate: threading.Event) -> None:
        self._name = "embedder-test"
        self.forward = GatedForward(gate)
        self.tokenized: Counter[int] = Counter()
        self._start_batching(
            self.forward, settings, packed=True, probe=lambda: None, namespace="test", tokenize_threads=2
        )
        self.reported_pending: list[int] = []  # the pending-requests gauge, each value it was set to
        report = self._metrics.load

        def record(queued_tokens: int, inflight_requests: int, pending_requests: int) -> None:
            self.reported_pending.append(pending_requests)
            report(queued_tokens, inflight_requests, pending_requests)

        self._metrics.load = record  # type: ignore[method-assign]

    async def embed(self, uid: int, *, priority: bool = False) -> float:
        def tokenize() -> Sequence[Sequence[int]]:
            self.tokenized[uid] += 1
            return [text(uid, TOKENS)]

        out = await self._submit(tokenize, DIMS, priority=priority)
        return float(out[DIMS[0]][0, 0])

    async def close(self) -> None:
        await self._batcher.close()


@pytest.fixture
def gate() -> threading.Event:
    return threading.Event()


@pytest.fixture
async def make(gate: threading.Event) -> AsyncIterator[Callable[..., GatedActor]]:
    actors: list[GatedActor] = []

    def build(**settings: float) -> GatedActor:
        # A batch takes one request; the queue holds two more; the first pass waits on the gate.
        values = {"max_batch_tokens": TOKENS, "max_queued_tokens": 2 * TOKENS, "max_wait_ms": 0, **settings}
        actors.append(GatedActor(BatchSettings(**values), gate))
        return actors[-1]

    yield build
    gate.set()
    for actor in actors:
        await actor.close()


async def fill_the_queue(actor: GatedActor) -> list[asyncio.Task[float]]:
    """One request on the (gated) forward pass and two more filling the queue, one after the other."""
    running = [asyncio.create_task(actor.embed(0))]
    await asyncio.to_thread(actor.forward.started.wait, 5)
    for uid in (1, 2):
        running.append(asyncio.create_task(actor.embed(uid)))
        await queued(actor, uid * TOKENS)
    return running


def pending(actor: GatedActor) -> int:
    """Ingestion requests the actor holds outside its queue: being tokenized or waiting for room."""
    return actor._pending(actor._batcher.stats())


async def queued(actor: GatedActor, tokens: int) -> None:
    """Until the actor's queue holds ``tokens`` tokens (5 s at most)."""
    for _ in range(500):
        if actor._batcher.stats().queued_tokens == tokens:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the queue holds {actor._batcher.stats().queued_tokens} tokens, not {tokens}")


async def test_requests_beyond_a_full_queue_wait_their_turn_and_are_tokenized_once(
    make: Callable[..., GatedActor], gate: threading.Event
) -> None:
    actor = make(max_pending_requests=3)
    running = await fill_the_queue(actor)
    waiting = [asyncio.create_task(actor.embed(uid)) for uid in (3, 4, 5)]
    await asyncio.sleep(0.2)
    assert not any(task.done() for task in waiting), "they wait in the actor, not refused"
    # A fourth is one more than max_pending_requests: refused at once, before it is tokenized.
    with pytest.raises(Backpressure, match="3 requests are pending") as refused:
        await actor.embed(6)
    assert refused.value.retry_after > 0 and actor.tokenized[6] == 0
    assert max(actor.reported_pending) == 3 and actor.reported_pending[-1] == 3, "the gauge shows them"
    gate.set()
    assert await asyncio.gather(*running, *waiting) == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert all(actor.tokenized[uid] == 1 for uid in range(6))
    assert actor._batcher.stats().rejected_requests == 1
    assert pending(actor) == 0 and actor.reported_pending[-1] == 0


async def test_without_waiting_room_a_full_queue_refuses_after_tokenizing(
    make: Callable[..., GatedActor], gate: threading.Event
) -> None:
    actor = make(max_pending_requests=0)
    running = await fill_the_queue(actor)
    with pytest.raises(Backpressure, match="more exceed"):
        await actor.embed(3)
    assert actor.tokenized[3] == 1
    gate.set()
    assert await asyncio.gather(*running) == [0.0, 1.0, 2.0]


async def test_queries_never_wait_for_room_in_the_ingestion_queue(
    make: Callable[..., GatedActor], gate: threading.Event
) -> None:
    actor = make(max_pending_requests=1)
    running = await fill_the_queue(actor)
    waiting = asyncio.create_task(actor.embed(3))
    await asyncio.sleep(0.1)
    # The one waiting place is taken; a query goes to its own lane all the same.
    query = asyncio.create_task(actor.embed(7, priority=True))
    gate.set()
    assert await query == 7.0
    assert await asyncio.gather(*running, waiting) == [0.0, 1.0, 2.0, 3.0]


async def test_a_request_waiting_for_room_fails_when_the_batcher_closes(
    make: Callable[..., GatedActor], gate: threading.Event
) -> None:
    actor = make(max_pending_requests=2)
    await fill_the_queue(actor)
    waiting = asyncio.create_task(actor.embed(3))
    await asyncio.sleep(0.1)
    await actor.close()
    with pytest.raises(EmbedderUnavailable):
        await asyncio.wait_for(waiting, 5)
    assert pending(actor) == 0


async def test_a_cancelled_waiter_leaves_the_others_waiting(
    make: Callable[..., GatedActor], gate: threading.Event
) -> None:
    actor = make(max_pending_requests=2)
    running = await fill_the_queue(actor)
    first, second = (asyncio.create_task(actor.embed(uid)) for uid in (3, 4))
    await asyncio.sleep(0.1)
    first.cancel()
    await asyncio.sleep(0.05)
    assert pending(actor) == 1 and not second.done()
    gate.set()
    assert await asyncio.gather(*running, second) == [0.0, 1.0, 2.0, 4.0]
