"""The pool of embedder actors as seen from the driver: route, retry, isolate poison, shut down.

Creating, finding and killing the actors is :mod:`workers.spawn`.

Importing this module imports neither torch nor transformers, nor does receiving a ModelInfo.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import ray
from ray import ObjectRef
from ray.actor import ActorHandle
from ray.exceptions import ActorDiedError, RayActorError

from workers.actor import EmbedderActor
from workers.errors import Backpressure, ConfigError, EmbedderUnavailable, PoisonTexts
from workers.model.embedding_model import ModelInfo
from workers.model.matryoshka import validate_dims
from workers.poison import KillsActors, embed_isolating
from workers.settings import BatchSettings, ModelSettings, PoolSettings
from workers.spawn import find_embedders, kill_embedders, start_embedders

log = logging.getLogger(__name__)

# After an actor fails, calls avoid it for this long, doubling per consecutive outage: Ray refuses
# calls at once while it restarts an actor, so retrying sooner would only burn attempts.
_AVOID_BASE_S = 1.0
_AVOID_MAX_S = 30.0
# How often a request run alone asks a restarting actor whether it is back.
_READY_POLL_S = 0.5


@dataclass(eq=False)
class _Slot:
    index: int
    handle: ActorHandle
    outstanding: int = 0  # characters of the texts sent and not answered yet
    calls: int = 0
    failures: int = 0  # consecutive actor failures
    avoid_until: float = 0.0
    in_flight: int = 0  # calls sent and not answered
    reserved: bool = False  # a suspect request waits to run alone here: send nothing else


class EmbedderPool:
    """Embedder actors behind one ``embed`` that many asyncio tasks of the driver may await at once.

    Routing: each call goes to the actor with the fewest characters in flight from this pool (a cheap
    stand-in for tokens: the driver does not tokenize), ties broken by fewest calls so far.  An actor
    that just failed is avoided for a while.  Every call's ObjectRef is awaited; a caller cancelled
    while waiting cancels its Ray task too.
    """

    def __init__(
        self,
        handles: Sequence[ActorHandle],
        info: ModelInfo,
        settings: PoolSettings,
        *,
        indices: Sequence[int] | None = None,
    ) -> None:
        """A pool over running actors that serve ``info``; :meth:`start` is the usual way to get one.

        ``indices``: each actor's ``i`` of ``embedder-{i}`` (default: their positions), for logs.
        """
        indices = range(len(handles)) if indices is None else indices
        self._slots = [_Slot(index, handle) for index, handle in zip(indices, handles, strict=True)]
        self._info = info
        self._settings = settings
        self.not_attached: dict[str, str] = {}
        """Attached pools only: the actors of the namespace that were not ready, name -> why."""

    @classmethod
    async def start(
        cls,
        model: ModelSettings,
        batching: BatchSettings,
        pool: PoolSettings,
        *,
        namespace: str | None = None,
        actor_class: type[EmbedderActor] = EmbedderActor,
    ) -> EmbedderPool:
        """A pool over freshly started actors (:func:`workers.spawn.start_embedders` says how many,
        where, and what it raises)."""
        handles, info = await start_embedders(
            model, batching, pool, namespace=namespace, actor_class=actor_class
        )
        return cls(handles, info, pool)

    @classmethod
    async def attach(
        cls, pool: PoolSettings, namespace: str, *, timeout_s: float | None = None
    ) -> EmbedderPool | None:
        """A pool over the embedder actors a running consumer started in ``namespace``, or None if none.

        Waits up to ``timeout_s`` (default ``pool.ready_timeout_s``) for each actor to be ready and
        routes to those that are; the others are logged and listed in :attr:`not_attached`, name ->
        why (:func:`workers.spawn.find_embedders`).  Guarantee: attaching never kills, restarts or
        touches an actor, whether it is ready, restarting, waiting for resources or failed to start.
        Raises EmbedderUnavailable naming each actor and why when none is ready.  The attached pool
        only routes calls; :meth:`shutdown` on it would stop the consumer's actors.
        """
        found = await find_embedders(namespace, pool.ready_timeout_s if timeout_s is None else timeout_s)
        if found is None:
            return None
        attached = cls(list(found.ready.values()), found.info, pool, indices=list(found.ready))
        attached.not_attached = dict(found.not_ready)
        return attached

    @property
    def info(self) -> ModelInfo:
        """The model every actor serves."""
        return self._info

    @property
    def handles(self) -> list[ActorHandle]:
        """The actors, in index order (to hand to other processes that embed on them)."""
        return [slot.handle for slot in self._slots]

    @property
    def size(self) -> int:
        """Number of actors."""
        return len(self._slots)

    def add_actor(self, index: int, handle: ActorHandle) -> None:
        """Route calls to ``handle`` (``embedder-{index}``, serving this pool's model) from now on."""
        self._slots.append(_Slot(index, handle))

    async def retire_actor(self) -> tuple[int, ActorHandle]:
        """Stop routing to the highest-indexed actor; returns it once its calls from this pool are done.

        The actor is not killed (other pools may still use it).  A pool keeps at least one actor.
        """
        if len(self._slots) <= 1:
            raise ConfigError("an embedder pool keeps at least one actor")
        slot = max(self._slots, key=lambda s: s.index)
        self._slots.remove(slot)
        while slot.outstanding > 0:  # calls already sent finish there; no new ones are routed to it
            await asyncio.sleep(0.02)
        return slot.index, slot.handle

    async def embed(self, texts: Sequence[str], dims: tuple[int, ...]) -> dict[int, np.ndarray]:
        """``{dim: float32 (len(texts), dim)}``, rows unit-length and in input order.

        Retries on another actor when an actor dies or is restarting, up to ``max_attempts`` tries,
        then raises EmbedderUnavailable from the last failure.  Once every actor has failed, tries wait
        for the avoidance of the first one to end (1 s, 2 s, 4 s, ...), so a quick restart is ridden
        out; a longer outage is the caller's to retry.  A call unanswered after ``call_timeout_s``
        counts as a failed try.  When an actor's queue is full it waits the actor's ``retry_after``
        and routes again (not counted as a try).

        Poison: after ``poison_after_crashes`` failed tries the request runs alone on an actor (once
        it answers, with nothing else in flight there), so a crash then is its own doing.  A request
        that crashes actors that many times alone is split in halves, each run alone, until the
        texts that kill actors are isolated; they are raised as PoisonTexts (the other texts'
        vectors are dropped: the caller asks again without the poison).  Texts the model fails on
        even alone (the actor raises FailedInputs, having run the rest) are embedded again without
        them and raised in PoisonTexts' ``failed`` with the actor's reason.
        Raises ConfigError for dims outside ``1..native_dim``; other errors of the actor propagate.
        The arrays may be read-only (zero-copy from Ray's object store).
        """
        return await self._embed(texts, dims, query_task=None)

    async def embed_queries(
        self, queries: Sequence[str], dims: tuple[int, ...], task: str | None = None
    ) -> dict[int, np.ndarray]:
        """Like :meth:`embed`, for search queries on the same actors: each actor formats them for its
        model (Qwen3-Embedding: ``Instruct: {task}\\nQuery:{q}``; others: the raw query) and batches
        them in its query lane, ahead of ingestion texts but never starving them."""
        return await self._embed(queries, dims, query_task=task or "")

    async def _embed(
        self, texts: Sequence[str], dims: tuple[int, ...], query_task: str | None
    ) -> dict[int, np.ndarray]:
        """``embed`` (``query_task`` None) or ``embed_queries`` (a task, "" for none), with retries."""
        validate_dims(dims, self._info.native_dim)
        texts = list(texts)
        request = partial(self._embed_request, dims=dims, query_task=query_task)
        vectors, crashed, failed = await embed_isolating(request, texts, dims, alone=False)
        if crashed or failed:
            raise PoisonTexts(
                tuple(texts[i] for i in crashed),
                self._settings.poison_after_crashes,
                {texts[i]: reason for i, reason in failed.items()},
            )
        return vectors

    async def _embed_request(
        self, texts: list[str], dims: tuple[int, ...], query_task: str | None, alone: bool
    ) -> dict[int, np.ndarray]:
        """One request, retried as :meth:`embed` says; raises KillsActors when it crashes actors alone."""
        attempt = crashes = 0
        while True:
            slot = await (self._reserve() if alone else self._pick())
            reserved, answered = alone, False
            try:
                if reserved:
                    await self._until_ready(slot)
                    answered = True
                result = await self._call(slot, texts, dims, query_task)
            except Backpressure as exc:
                await asyncio.sleep(exc.retry_after)
                continue
            except (RayActorError, TimeoutError) as exc:
                self._failed(slot, exc)
                if answered:  # the actor was up and ran nothing else: this request crashed it
                    crashes += 1
                    if crashes >= self._settings.poison_after_crashes:
                        raise KillsActors from exc
                    continue
                attempt += 1
                if attempt >= self._settings.max_attempts:
                    raise EmbedderUnavailable(
                        f"embedding failed on {attempt} tries; last actor embedder-{slot.index}: {exc!r}"
                    ) from exc
                if attempt >= self._settings.poison_after_crashes and not alone:
                    log.warning("request of %d texts failed %d times; running it alone", len(texts), attempt)
                    alone = True
                    continue
                await asyncio.sleep(self._wait_before_retry())
                continue
            finally:
                if reserved:
                    slot.reserved = False
            slot.failures, slot.avoid_until = 0, 0.0
            return result

    async def stats(self) -> list[dict[str, Any]]:
        """Every actor's counters (an actor that cannot answer reports its error instead)."""
        replies = await asyncio.gather(
            *(slot.handle.stats.remote() for slot in self._slots), return_exceptions=True
        )
        return [
            reply if isinstance(reply, dict) else {"actor": f"embedder-{slot.index}", "error": repr(reply)}
            for slot, reply in zip(self._slots, replies, strict=True)
        ]

    def shutdown(self) -> None:
        """Kill every actor (no restart); calls still in flight fail with EmbedderUnavailable."""
        kill_embedders([slot.handle for slot in self._slots])

    async def _call(
        self, slot: _Slot, texts: list[str], dims: tuple[int, ...], query_task: str | None = None
    ) -> dict[int, np.ndarray]:
        """One embed call on ``slot``; TimeoutError after ``call_timeout_s`` (the Ray task is cancelled)."""
        cost = sum(len(text) for text in texts)
        slot.outstanding += cost
        slot.calls += 1
        slot.in_flight += 1
        ref: ObjectRef[dict[int, np.ndarray]] = (
            slot.handle.embed.remote(texts, dims)
            if query_task is None
            else slot.handle.embed_queries.remote(texts, dims, query_task or None)
        )
        try:
            async with asyncio.timeout(self._settings.call_timeout_s):
                return await ref
        except (asyncio.CancelledError, TimeoutError):
            ray.cancel(ref)  # the actor drops the texts instead of embedding them for nobody
            raise
        finally:
            slot.outstanding -= cost
            slot.in_flight -= 1

    async def _pick(self) -> _Slot:
        """The least loaded actor not avoided, among those no suspect request is waiting for."""
        while all(slot.reserved for slot in self._slots):
            await asyncio.sleep(0.05)
        now = time.monotonic()
        return min(
            (slot for slot in self._slots if not slot.reserved),
            key=lambda slot: (slot.avoid_until > now, slot.outstanding, slot.calls),
        )

    async def _reserve(self) -> _Slot:
        """A slot with nothing in flight, reserved (no new calls go there) until the caller clears it."""
        while True:
            free = [slot for slot in self._slots if not slot.reserved]
            if free:
                now = time.monotonic()
                slot = min(free, key=lambda slot: (slot.avoid_until > now, slot.in_flight, slot.outstanding))
                slot.reserved = True
                break
            await asyncio.sleep(_READY_POLL_S)
        while slot.in_flight:
            await asyncio.sleep(0.05)
        return slot

    async def _until_ready(self, slot: _Slot) -> None:
        """Wait until ``slot``'s actor answers (riding out a restart), at most ``ready_timeout_s``.

        Raises ActorDiedError when the actor is gone for good, EmbedderUnavailable when it does not
        come back in time.
        """
        deadline = time.monotonic() + self._settings.ready_timeout_s
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
                    f"embedder-{slot.index} did not come back within {self._settings.ready_timeout_s:.0f}s"
                )
            await asyncio.sleep(_READY_POLL_S)

    def _failed(self, slot: _Slot, exc: RayActorError | TimeoutError) -> None:
        now = time.monotonic()
        if slot.avoid_until > now:
            return  # another call already reported this outage: one death fails every call in flight
        slot.failures += 1
        avoid = min(_AVOID_MAX_S, _AVOID_BASE_S * 2 ** (slot.failures - 1))
        slot.avoid_until = now + avoid
        log.warning("embedder-%d failed (%s); avoiding it for %.0fs", slot.index, exc, avoid)

    def _wait_before_retry(self) -> float:
        """Nothing while some actor is not avoided, else until the first one's avoidance ends."""
        now = time.monotonic()
        return max(0.0, min(slot.avoid_until for slot in self._slots) - now)
