"""The pool of reranker actors as seen from the driver: start, route, retry, shut down.

Reranker actors belong to the process that starts them (``serve``, ``search``, ``eval-recall``):
they are not detached and die with it.  Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import ray
from ray import ObjectRef
from ray.actor import ActorHandle
from ray.exceptions import RayActorError

from workers.errors import Backpressure, ConfigError, EmbedderUnavailable, FailedInputs, InputTooLong
from workers.model.reranker_model import RerankerInfo
from workers.reranker_actor import RerankerActor
from workers.reranker_settings import RerankerSettings
from workers.slots import Slot, Slots

log = logging.getLogger(__name__)

_MAX_CONCURRENCY = 1024
_RemoteReranker = ray.remote(RerankerActor)


class RerankerPool:
    """Reranker actors behind one :meth:`score` that many asyncio tasks may await at once.

    A call's documents are split across the actors (contiguous parts, the least loaded actor
    first), each part retried on another actor when its actor dies or is restarting.
    """

    def __init__(
        self, handles: Sequence[ActorHandle], info: RerankerInfo, settings: RerankerSettings
    ) -> None:
        self._slots = Slots([Slot(i, h) for i, h in enumerate(handles)], settings.ready_timeout_s)
        self._info = info
        self._settings = settings

    @classmethod
    async def start(
        cls,
        settings: RerankerSettings,
        *,
        namespace: str | None = None,
        actor_class: type[Any] = RerankerActor,
    ) -> RerankerPool:
        """Start ``settings.num_actors`` actors (the caller has joined Ray) and wait until each has
        loaded the model.  With GPUs in the cluster each asks for ``gpus_per_actor``, else for
        ``cpus_per_actor``.  ConfigError when the model does not load; EmbedderUnavailable when
        the actors are not ready within ``ready_timeout_s``.  Nothing is left running when it raises.
        ``actor_class``: a RerankerActor subclass to run instead (tests inject faults with one)."""
        namespace = namespace or ray.get_runtime_context().namespace
        gpus = ray.cluster_resources().get("GPU", 0.0)
        resources = {"num_gpus": settings.gpus_per_actor} if gpus else {"num_cpus": settings.cpus_per_actor}
        remote = _RemoteReranker if actor_class is RerankerActor else ray.remote(actor_class)
        options = remote.options(
            max_restarts=settings.max_restarts, max_concurrency=_MAX_CONCURRENCY, **resources
        )
        handles = [
            cast(ActorHandle, options.remote(settings, i, namespace)) for i in range(settings.num_actors)
        ]
        calls: list[asyncio.Future[RerankerInfo]] = [asyncio.ensure_future(h.ready.remote()) for h in handles]
        done, pending = await asyncio.wait(
            calls, timeout=settings.ready_timeout_s, return_when=asyncio.FIRST_EXCEPTION
        )
        failed = next((call for call in done if call.exception() is not None), None)
        if failed is None and not pending:
            info: RerankerInfo = calls[0].result()
            log.info("reranker pool ready: %d actors, %s", len(handles), info)
            return cls(handles, info, settings)
        for call in pending:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)
        for handle in handles:
            ray.kill(handle, no_restart=True)
        if failed is None:
            raise EmbedderUnavailable(
                f"reranker actors were not ready within {settings.ready_timeout_s:.0f}s"
            )
        exc = failed.exception()
        if isinstance(exc, RayActorError) and exc.actor_init_failed:
            raise ConfigError(f"a reranker actor could not load {settings.name_or_path!r}: {exc}") from exc
        raise EmbedderUnavailable(f"a reranker actor failed while starting: {exc}") from exc

    @property
    def info(self) -> RerankerInfo:
        """The reranker every actor serves."""
        return self._info

    @property
    def handles(self) -> list[ActorHandle]:
        """The actors, in index order."""
        return [slot.handle for slot in self._slots.items]

    async def score(
        self, query: str, documents: Sequence[str], instruction: str | None = None
    ) -> list[float]:
        """The relevance score in [0, 1] of each document for ``query``, in input order.

        ``instruction`` (Qwen3 rerankers) defaults to ``reranker.instruction``.  Raises InputTooLong
        (``index`` = the document) for a pair over the model's limit, FailedInputs naming the
        documents the model fails on even alone, Backpressure once every actor's queue stayed full
        for ``backpressure_s``, EmbedderUnavailable after ``max_attempts`` tries across actor deaths.
        """
        documents = list(documents)
        if not documents:
            return []
        count = max(1, min(len(self._slots.items), len(documents) // 8))
        size = -(-len(documents) // count)
        starts = range(0, len(documents), size)
        try:
            # A part that fails cancels the others (down to their Ray tasks): no result is left unread.
            async with asyncio.TaskGroup() as group:
                parts = [
                    group.create_task(self._score_part(query, documents[s : s + size], instruction, s))
                    for s in starts
                ]
        except ExceptionGroup as failed:
            first = failed.exceptions[0]  # the first part's own error, not a group, its cause kept
            raise first from first.__cause__
        return [float(x) for part in parts for x in part.result()]

    async def _score_part(
        self, query: str, documents: list[str], instruction: str | None, offset: int
    ) -> np.ndarray:
        """One part of a call's documents, from its ``offset``-th (errors name documents of the call)."""
        try:
            return await self._score_retried(query, documents, instruction)
        except InputTooLong as exc:
            raise InputTooLong(exc.index + offset, exc.tokens, exc.limit) from exc
        except FailedInputs as exc:
            raise FailedInputs({index + offset: why for index, why in exc.failures.items()}) from exc

    async def _score_retried(self, query: str, documents: list[str], instruction: str | None) -> np.ndarray:
        attempt, waited = 0, 0.0
        while True:
            slot = await self._slots.pick()
            try:
                return await self._call(slot, query, documents, instruction)
            except Backpressure as exc:
                if waited + exc.retry_after > self._settings.backpressure_s:
                    raise Backpressure(
                        f"every reranker actor's queue stayed full for {waited:.1f}s "
                        f"(reranker.backpressure_s={self._settings.backpressure_s:g})",
                        retry_after=exc.retry_after,
                    ) from exc
                waited += exc.retry_after
                await asyncio.sleep(exc.retry_after)
            except (RayActorError, TimeoutError) as exc:
                self._slots.failed(slot, exc)
                attempt += 1
                if attempt >= self._settings.max_attempts:
                    raise EmbedderUnavailable(
                        f"reranking failed on {attempt} tries; last actor reranker-{slot.index}: {exc!r}"
                    ) from exc
                await asyncio.sleep(self._slots.wait_before_retry())
            else:
                slot.failures, slot.avoid_until = 0, 0.0

    async def _call(
        self, slot: Slot, query: str, documents: list[str], instruction: str | None
    ) -> np.ndarray:
        """One score call on ``slot``; TimeoutError after ``call_timeout_s`` (the Ray task is cancelled)."""
        cost = len(query) * len(documents) + sum(map(len, documents))
        slot.outstanding += cost
        slot.calls += 1
        slot.in_flight += 1
        ref: ObjectRef[np.ndarray] = slot.handle.score.remote(query, documents, instruction)
        try:
            async with asyncio.timeout(self._settings.call_timeout_s):
                return await ref
        except (asyncio.CancelledError, TimeoutError):
            ray.cancel(ref)  # the actor drops the pairs instead of scoring them for nobody
            raise
        finally:
            slot.outstanding -= cost
            slot.in_flight -= 1

    async def stats(self) -> list[dict[str, Any]]:
        """Every actor's counters (an actor that cannot answer reports its error instead)."""
        replies = await asyncio.gather(
            *(slot.handle.stats.remote() for slot in self._slots.items), return_exceptions=True
        )
        return [
            reply if isinstance(reply, dict) else {"actor": f"reranker-{slot.index}", "error": repr(reply)}
            for slot, reply in zip(self._slots.items, replies, strict=True)
        ]

    def shutdown(self) -> None:
        """Kill every actor (no restart); calls still in flight fail."""
        for slot in self._slots.items:
            ray.kill(slot.handle, no_restart=True)
