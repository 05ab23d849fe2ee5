"""The pool of embedder actors as seen from the driver: route, retry, isolate poison, shut down.

Creating, finding and killing the actors is :mod:`workers.spawn`.

Importing this module imports neither torch nor transformers, nor does receiving a ModelInfo.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from workers.actor import EmbedderActor
from workers.errors import Backpressure, ConfigError, EmbedderUnavailable, PoisonTexts, UnknownAdapter
from workers.model.embedding_model import ModelInfo
from workers.model.inputs import ModelInput, text_of
from workers.model.matryoshka import validate_dims
from workers.poison import KillsActors, embed_isolating
from workers.refusal_backoff import RefusalBackoff
from workers.settings import BatchSettings, ModelSettings, PoolSettings
from workers.sharing import join_embedders
from workers.slots import Slot, Slots, call_slot
from workers.spawn import EmbeddersRunning, find_embedders, kill_embedders, start_embedders

log = logging.getLogger(__name__)


class EmbedderPool:
    """Embedder actors behind one ``embed`` that many asyncio tasks of the driver may await at once.

    Routing: each call goes to the actor with the fewest characters in flight from this pool (a cheap
    stand-in for tokens: the driver does not tokenize), ties broken by fewest calls so far.  An actor
    that just failed is avoided for a while.  Ingestion calls go only to actors whose
    :class:`~workers.admission.AdmissionLimit` admits one more (none is limited until it refuses one
    of this pool's calls); while none does, they wait here rather than be sent to be refused.  Every
    call's ObjectRef is awaited; a caller cancelled while waiting cancels its Ray task too.
    """

    def __init__(
        self,
        handles: Sequence[ActorHandle],
        info: ModelInfo,
        settings: PoolSettings,
        *,
        indices: Sequence[int] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """A pool over running actors that serve ``info``; :meth:`start` is the usual way to get one.

        ``indices``: each actor's ``i`` of ``embedder-{i}`` (default: their positions), for logs.
        ``rng``: draws the jitter of waits after refusals (default: a fresh, unseeded one).
        """
        indices = range(len(handles)) if indices is None else indices
        self._slots = Slots(
            [Slot(i, handle) for i, handle in zip(indices, handles, strict=True)], settings.ready_timeout_s
        )
        self._info = info
        self._settings = settings
        self._backoff = RefusalBackoff(rng=rng)
        self.not_attached: dict[str, str] = {}
        """Attached pools only: the actors of the namespace that were not ready, name -> why."""
        self.started_here = False
        """Whether :meth:`start` created these actors (rather than joining running ones)."""

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
        """A pool over the shared actors ``namespace`` runs (``pool.detached``: joined, if they loaded
        ``model``, else ConfigError), or else over freshly started ones
        (:func:`workers.spawn.start_embedders` says how many, where, and what it raises)."""
        namespace = namespace or ray.get_runtime_context().namespace
        for _ in range(2):  # twice: a worker starting at the same time may take the names first
            # The actors load what every worker shares; model.adapter is each request's choice.
            found = await join_embedders(model.loaded(), pool, namespace) if pool.detached else None
            if found is not None:
                joined = cls(list(found.ready.values()), found.info, pool, indices=list(found.ready))
                joined.not_attached = dict(found.not_ready)
                return joined
            try:
                handles, info = await start_embedders(
                    model.loaded(), batching, pool, namespace=namespace, actor_class=actor_class
                )
            except EmbeddersRunning:
                if not pool.detached:
                    raise
                continue
            started = cls(handles, info, pool)
            started.started_here = True
            return started
        raise EmbedderUnavailable(f"embedder actors of namespace {namespace!r} came and went while joining")

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
        return [slot.handle for slot in self._slots.items]

    @property
    def size(self) -> int:
        """Number of actors."""
        return len(self._slots.items)

    @property
    def indices(self) -> list[int]:
        """Each actor's ``i`` of ``embedder-{i}``."""
        return [slot.index for slot in self._slots.items]

    def drop_actor(self, index: int) -> None:
        """Stop routing to ``embedder-{index}`` (gone from Ray); calls in flight there fail and retry."""
        self._slots.items = [slot for slot in self._slots.items if slot.index != index]

    def add_actor(self, index: int, handle: ActorHandle) -> None:
        """Route calls to ``handle`` (``embedder-{index}``, serving this pool's model) from now on."""
        self._slots.items.append(Slot(index, handle))
        self._slots.wake_pickers()

    async def retire_actor(self) -> tuple[int, ActorHandle]:
        """Stop routing to the highest-indexed actor; returns it once its calls from this pool are done.

        The actor is not killed (other pools may still use it).  A pool keeps at least one actor.
        """
        if len(self._slots.items) <= 1:
            raise ConfigError("an embedder pool keeps at least one actor")
        slot = max(self._slots.items, key=lambda s: s.index)
        self._slots.items.remove(slot)
        while slot.outstanding > 0:  # calls already sent finish there; no new ones are routed to it
            await asyncio.sleep(0.02)
        return slot.index, slot.handle

    async def embed(
        self, texts: Sequence[ModelInput], dims: tuple[int, ...], adapter: str | None = None
    ) -> dict[int, np.ndarray]:
        """``{dim: float32 (len(texts), dim)}``, rows unit-length and in input order, computed with the
        LoRA adapter ``adapter`` of ``model.adapters`` (None: the base model; UnknownAdapter, before
        anything is sent, for one the actors did not load).  A
        :class:`~workers.model.inputs.TokenizedText` travels with its ids and is not tokenized again.

        Retries on another actor when an actor dies or is restarting, up to ``max_attempts`` tries,
        then raises EmbedderUnavailable from the last failure.  Once every actor has failed, tries wait
        for the avoidance of the first one to end (1 s, 2 s, 4 s, ...), so a quick restart is ridden
        out; a longer outage is the caller's to retry.  A call unanswered after ``call_timeout_s``
        counts as a failed try.  When an actor's queue is full it waits and routes again (not counted
        as a try; the refusal also lowers what this pool keeps in flight at that actor,
        :mod:`workers.admission`): the n-th refusal in a row waits the actor's ``retry_after`` times
        a random factor in ``[1, min(2**(n-1), 8)]`` (the first exactly ``retry_after``), so callers
        refused together come back spread out (:class:`~workers.refusal_backoff.RefusalBackoff`).
        :meth:`embed_queries` waits exactly ``retry_after`` each time, for at most
        ``query_backpressure_s`` in all, then raises Backpressure.

        Poison: after ``poison_after_crashes`` failed tries the request runs alone on an actor (once
        it answers, with nothing else in flight there), so a crash then is its own doing.  A request
        that crashes actors that many times alone is split in halves, each run alone, until the
        texts that kill actors are isolated; they are raised as PoisonTexts, by their text (the other texts'
        vectors are dropped: the caller asks again without the poison).  Texts the model fails on
        even alone (the actor raises FailedInputs, having run the rest) are embedded again without
        them and raised in PoisonTexts' ``failed`` with the actor's reason.
        Raises ConfigError for dims outside ``1..native_dim``; other errors of the actor propagate.
        The arrays may be read-only (zero-copy from Ray's object store).
        """
        return await self._embed(texts, dims, query_task=None, adapter=adapter)

    async def embed_queries(
        self,
        queries: Sequence[str],
        dims: tuple[int, ...],
        task: str | None = None,
        adapter: str | None = None,
    ) -> dict[int, np.ndarray]:
        """Like :meth:`embed`, for search queries on the same actors: each actor formats them for its
        model (Qwen3-Embedding: ``Instruct: {task}\\nQuery:{q}``; others: the raw query) and batches
        them in its query lane, ahead of ingestion texts but never starving them."""
        return await self._embed(queries, dims, query_task=task or "", adapter=adapter)

    async def _embed(
        self, texts: Sequence[ModelInput], dims: tuple[int, ...], query_task: str | None, adapter: str | None
    ) -> dict[int, np.ndarray]:
        """``embed`` (``query_task`` None) or ``embed_queries`` (a task, "" for none), with retries."""
        validate_dims(dims, self._info.native_dim)
        if adapter is not None and adapter not in self._info.adapters:
            loaded = sorted(self._info.adapters)
            raise UnknownAdapter(f"no LoRA adapter {adapter!r} is loaded by the embedder actors ({loaded})")
        texts = list(texts)
        request = partial(self._embed_request, dims=dims, query_task=query_task, adapter=adapter)
        vectors, crashed, failed = await embed_isolating(request, texts, dims, alone=False)
        if crashed or failed:
            raise PoisonTexts(
                tuple(text_of(texts[i]) for i in crashed),
                self._settings.poison_after_crashes,
                {text_of(texts[i]): reason for i, reason in failed.items()},
            )
        return vectors

    async def _embed_request(
        self,
        texts: list[ModelInput],
        dims: tuple[int, ...],
        query_task: str | None,
        alone: bool,
        adapter: str | None = None,
    ) -> dict[int, np.ndarray]:
        """One request, retried as :meth:`embed` says; raises KillsActors when it crashes actors alone."""
        attempt = crashes = refusals = 0  # refusals: in a row, since the last other outcome
        waited = 0.0  # in full queues, across tries
        while True:
            # Ingestion calls wait here while every actor holds what its admission limit allows;
            # queries (their own lane) and lone requests (nothing else in flight) are not limited.
            ingestion = query_task is None and not alone
            slot = await (self._slots.reserve() if alone else self._slots.pick(ingestion=ingestion))
            reserved, answered = alone, False
            try:
                if reserved:
                    await self._slots.until_ready(slot)
                    answered = True
                result = await call_slot(
                    slot, texts, dims, query_task, adapter, self._settings.call_timeout_s, ingestion=ingestion
                )
            except Backpressure as exc:
                if query_task is not None and waited + exc.retry_after > self._settings.query_backpressure_s:
                    # A query is someone waiting: past the bound, say so and when to come back.
                    raise Backpressure(
                        f"every embedder actor's queue stayed full for {waited:.1f}s "
                        f"(pool.query_backpressure_s={self._settings.query_backpressure_s:g})",
                        retry_after=exc.retry_after,
                    ) from exc
                # A query waits the hint exactly: someone is waiting, its lane's hint is the time to drain
                # the exact excess, and the bound above stays exact.  Ingestion backs off with jitter.
                refusals += 1
                delay = exc.retry_after
                if query_task is None:
                    delay = self._backoff.delay(exc.retry_after, refusals)
                waited += delay
                await asyncio.sleep(delay)
                continue
            except (RayActorError, TimeoutError) as exc:
                refusals = 0
                self._slots.failed(slot, exc)
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
                await asyncio.sleep(self._slots.wait_before_retry())
                continue
            finally:
                if reserved:
                    slot.reserved = False
                self._slots.wake_pickers()
            slot.failures, slot.avoid_until = 0, 0.0
            return result

    def admission(self) -> list[dict[str, Any]]:
        """Per actor, what this pool learnt from its refusals: ``limit`` (ingestion calls it keeps in
        flight there; None while unlimited) and ``refusals`` seen."""
        return [
            {
                "actor": f"embedder-{slot.index}",
                "limit": slot.admission.limit if math.isfinite(slot.admission.limit) else None,
                "refusals": slot.admission.refusals,
            }
            for slot in self._slots.items
        ]

    async def stats(self) -> list[dict[str, Any]]:
        """Every actor's counters (an actor that cannot answer reports its error instead)."""
        replies = await asyncio.gather(
            *(slot.handle.stats.remote() for slot in self._slots.items), return_exceptions=True
        )
        return [
            reply if isinstance(reply, dict) else {"actor": f"embedder-{slot.index}", "error": repr(reply)}
            for slot, reply in zip(self._slots.items, replies, strict=True)
        ]

    def shutdown(self) -> None:
        """Kill every actor (no restart); calls still in flight fail with EmbedderUnavailable."""
        kill_embedders([slot.handle for slot in self._slots.items])

    def release(self) -> None:
        """Done with the actors: :meth:`shutdown`, unless they are detached (shared: they stay up for
        the next worker, `serve` and `search`; `python -m pipeline stop-embedders` stops them)."""
        if not self._settings.detached:
            self.shutdown()
        else:
            log.info("leaving %d detached embedder actors running for the next worker", self.size)
