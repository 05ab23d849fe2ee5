"""Shared embedder actors: a worker joins the detached actors its namespace already runs, and `serve`
follows them as they appear (autoscaling, another worker) and go.

Joining checks that the running actors loaded the model this worker is configured for: vectors of
two models must never meet in one pool.  Following only adds actors that answer with the pool's
model and drops those Ray no longer knows; it never kills, restarts or reconfigures an actor.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

import ray

from workers.errors import ConfigError
from workers.model.info import ModelInfo
from workers.settings import ModelSettings, PoolSettings
from workers.spawn import FoundEmbedders, ask_ready, find_embedders, list_embedders

log = logging.getLogger(__name__)


class FollowedPool(Protocol):
    """What following needs of a pool (:class:`workers.pool.EmbedderPool` is one): the model it serves,
    the ``i`` of each ``embedder-{i}`` it routes to, and adding or dropping one."""

    @property
    def info(self) -> ModelInfo: ...

    @property
    def indices(self) -> list[int]: ...

    def add_actor(self, index: int, handle: Any) -> None: ...

    def drop_actor(self, index: int) -> None: ...


async def join_embedders(model: ModelSettings, pool: PoolSettings, namespace: str) -> FoundEmbedders | None:
    """The running ``embedder-*`` actors of ``namespace`` if they serve ``model``; None if there are none.

    Raises ConfigError naming the differing settings and what to do when they loaded another model,
    EmbedderUnavailable when none is ready within ``pool.ready_timeout_s``.
    """
    found = await find_embedders(namespace, pool.ready_timeout_s)
    if found is None:
        return None
    served: list[ModelSettings] = await asyncio.gather(
        *(handle.model_settings.remote() for handle in found.ready.values())
    )
    for theirs in served:
        if theirs != model:
            ours, others = model.model_dump(), theirs.model_dump()
            differ = ", ".join(
                f"{k}: running {others[k]!r}, configured {v!r}" for k, v in ours.items() if others[k] != v
            )
            raise ConfigError(
                f"the embedder actors running in Ray namespace {namespace!r} loaded another model "
                f"({differ}). "
                "They are shared by every worker of the namespace: stop them first with "
                "`python -m pipeline stop-embedders` (then this worker starts its own), or give this "
                "deployment its own ray.namespace"
            )
    log.info(
        "joined %d running embedder actors of namespace %r (no model load): %s",
        len(found.ready), namespace, found.info,
    )  # fmt: skip
    return found


async def sync_embedders(pool: FollowedPool, namespace: str, timeout_s: float) -> None:
    """One round of :func:`follow_embedders`: add the new ready actors, drop the ones gone."""
    running = list_embedders(namespace)
    for index in sorted(set(pool.indices) - set(running)):
        pool.drop_actor(index)
        log.info("embedder-%d is gone from namespace %r; no longer routed to", index, namespace)
    new = {i: name for i, name in running.items() if i not in pool.indices}
    handles = {}
    for index, name in new.items():
        try:
            handles[index] = ray.get_actor(name, namespace=namespace)
        except ValueError:  # gone between the listing and now
            continue
    answers = await ask_ready(list(handles.values()), timeout_s)
    for (index, handle), answer in zip(handles.items(), answers, strict=True):
        if answer == pool.info:
            pool.add_actor(index, handle)
            log.info("embedder-%d joined namespace %r; now routed to", index, namespace)
        elif answer is not None and not isinstance(answer, BaseException):
            log.warning("embedder-%d serves another model (%s); not routed to", index, answer)


async def follow_embedders(pool: FollowedPool, namespace: str, interval_s: float) -> None:
    """Every ``interval_s``, :func:`sync_embedders`; a failed round is logged and the next one runs.

    Runs until cancelled.  An actor that is not ready yet (loading, restarting) is asked again next round.
    """
    while True:
        await asyncio.sleep(interval_s)
        try:
            await sync_embedders(pool, namespace, timeout_s=min(interval_s, 5.0))
        except Exception:  # the pool keeps serving with the actors it has
            log.warning("looking for embedder actors in namespace %r failed", namespace, exc_info=True)
