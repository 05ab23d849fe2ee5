"""The pool's actors and what the pool knows of each: its load, its failures, whether a suspect
request has reserved it; which one the next call goes to.

Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import ray
from ray import ObjectRef
from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError, RayActorError

from workers.admission import AdmissionLimit
from workers.errors import Backpressure, EmbedderUnavailable
from workers.model.inputs import ModelInput, text_of
from workers.wakeup import Wakeup

log = logging.getLogger("workers.pool")  # the pool's own log lines, wherever the code lives

# After an actor fails, calls avoid it for this long, doubling per consecutive outage: Ray refuses
# calls at once while it restarts an actor, so retrying sooner would only burn attempts.
_AVOID_BASE_S = 1.0
_AVOID_MAX_S = 30.0
# How often a request run alone asks a restarting actor whether it is back.
_READY_POLL_S = 0.5


@dataclass(eq=False)
class Slot:
    """One actor of the pool and what the pool knows of it."""

    index: int
    handle: ActorHandle
    outstanding: int = 0  # characters of the texts sent and not answered yet
    calls: int = 0
    failures: int = 0  # consecutive actor failures
    avoid_until: float = 0.0
    in_flight: int = 0  # calls sent and not answered
    reserved: bool = False  # a suspect request waits to run alone here: send nothing else
    ingesting: int = 0  # ingestion calls sent and not answered (queries and lone requests excluded)
    admission: AdmissionLimit = field(default_factory=AdmissionLimit)  # of ingestion calls, from refusals


class Slots:
    """The slots of one pool, in the order actors joined; ``items`` is the live list."""

    def __init__(self, items: list[Slot], ready_timeout_s: float) -> None:
        self.items = items
        self.ready_timeout_s = ready_timeout_s
        self._picker_wakeup = Wakeup()  # notified by wake_pickers

    async def pick(self, *, ingestion: bool = False) -> Slot:
        """The least loaded actor not avoided, among those no suspect request is waiting for.

        ``ingestion``: among those whose :class:`~workers.admission.AdmissionLimit` admits one more
        ingestion call, waiting for a call to be answered while none does."""
        while True:
            open_slots = [
                slot
                for slot in self.items
                if not slot.reserved and (not ingestion or slot.admission.admits(slot.ingesting))
            ]
            if open_slots:
                break
            if ingestion and any(not slot.reserved for slot in self.items):
                await self._picker_wakeup.wait()
            else:
                await asyncio.sleep(0.05)
        now = time.monotonic()
        return min(open_slots, key=lambda slot: (slot.avoid_until > now, slot.outstanding, slot.calls))

    def wake_pickers(self) -> None:
        """Wake the pickers waiting for admission: a call of :func:`call_slot` ended (however), or an
        actor joined."""
        self._picker_wakeup.notify()

    async def reserve(self) -> Slot:
        """A slot with nothing in flight, reserved (no new calls go there) until the caller clears it."""
        while True:
            free = [slot for slot in self.items if not slot.reserved]
            if free:
                now = time.monotonic()
                slot = min(free, key=lambda slot: (slot.avoid_until > now, slot.in_flight, slot.outstanding))
                slot.reserved = True
                break
            await asyncio.sleep(_READY_POLL_S)
        while slot.in_flight:
            await asyncio.sleep(0.05)
        return slot

    async def until_ready(self, slot: Slot) -> None:
        """Wait until ``slot``'s actor answers (riding out a restart), at most ``ready_timeout_s``.

        Raises ActorDiedError when the actor is gone for good, EmbedderUnavailable when it does not
        come back in time.
        """
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            try:
                async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                    await slot.handle.ready.remote()
                return
            except ActorDiedError:
                raise
            except (RayActorError, TimeoutError):
                pass  # restarting, or not back yet
            if time.monotonic() >= deadline:
                raise EmbedderUnavailable(
                    f"embedder-{slot.index} did not come back within {self.ready_timeout_s:.0f}s"
                )
            await asyncio.sleep(_READY_POLL_S)

    def failed(self, slot: Slot, exc: RayActorError | TimeoutError) -> None:
        now = time.monotonic()
        if slot.avoid_until > now:
            return  # another call already reported this outage: one death fails every call in flight
        slot.failures += 1
        avoid = min(_AVOID_MAX_S, _AVOID_BASE_S * 2 ** (slot.failures - 1))
        slot.avoid_until = now + avoid
        log.warning("embedder-%d failed (%s); avoiding it for %.0fs", slot.index, exc, avoid)

    def wait_before_retry(self) -> float:
        """Nothing while some actor is not avoided, else until the first one's avoidance ends."""
        now = time.monotonic()
        return max(0.0, min(slot.avoid_until for slot in self.items) - now)


async def call_slot(
    slot: Slot,
    texts: list[ModelInput],
    dims: tuple[int, ...],
    query_task: str | None,
    adapter: str | None,
    timeout_s: float,
    *,
    ingestion: bool = False,
) -> dict[int, np.ndarray]:
    """One embed call on ``slot`` (``embed_queries`` when ``query_task`` is not None, "" for no task),
    with LoRA adapter ``adapter``; TimeoutError after ``timeout_s`` (the Ray task is cancelled then, as
    when the caller is: the actor drops the texts instead of embedding them for nobody).

    ``ingestion``: an ingestion call routed by :meth:`Slots.pick` with ``ingestion=True``; its refusal
    or answer updates the slot's admission limit."""
    cost = sum(len(text_of(item)) for item in texts)
    slot.outstanding += cost
    slot.calls += 1
    slot.in_flight += 1
    slot.ingesting += ingestion
    epoch = slot.admission.epoch
    # The adapter travels only when one is named: a base call stays what it was on the wire.
    extra = () if adapter is None else (adapter,)
    ref: ObjectRef[dict[int, np.ndarray]] = (
        slot.handle.embed.remote(texts, dims, *extra)
        if query_task is None
        else slot.handle.embed_queries.remote(texts, dims, query_task or None, *extra)
    )
    try:
        async with asyncio.timeout(timeout_s):
            result = await ref
    except Backpressure:
        if ingestion:
            slot.admission.refused(epoch, slot.ingesting - 1)
        raise
    except (asyncio.CancelledError, TimeoutError):
        ray.cancel(ref)
        raise
    finally:
        slot.outstanding -= cost
        slot.in_flight -= 1
        slot.ingesting -= ingestion
    if ingestion:
        slot.admission.answered(slot.ingesting)
    return result
