"""Creating, finding and killing embedder actors: ``embedder-{i}`` named actors in a Ray namespace.

:func:`start_embedders` sizes the pool to the cluster (one actor per ``gpus_per_actor`` GPUs,
else ``num_actors``), asks Ray for each actor's resources and waits until every actor has
loaded the model, killing the actors it created when they fail; :func:`find_embedders` finds
the actors another process started and never kills any of them.  Importing this module imports
neither torch nor transformers.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import ray
from ray import ObjectRef
from ray.actor import ActorHandle
from ray.exceptions import ActorAlreadyExistsError, ActorDiedError, ActorUnavailableError, RayActorError
from ray.util.state import get_actor

from workers.actor import EmbedderActor
from workers.errors import ConfigError, EmbedderUnavailable
from workers.model.embedding_model import ModelInfo
from workers.settings import BatchSettings, ModelSettings, PoolSettings

log = logging.getLogger(__name__)

# Concurrent calls one actor runs; an async actor's calls only wait on its batcher, so this merely has
# to exceed what the drivers keep in flight (the batcher's queue bound refuses work long before).
_MAX_CONCURRENCY = 1024

_RemoteEmbedder = ray.remote(EmbedderActor)
# How often a read tool asks a restarting actor whether it is back (Ray refuses calls meanwhile).
_ASK_AGAIN_S = 0.5
_EMBEDDER_NAME = re.compile(r"embedder-(\d+)")


class EmbeddersRunning(ConfigError):
    """The namespace already has ``embedder-*`` actors: a pool that does not share them cannot start."""


@dataclass(frozen=True)
class FoundEmbedders:
    """What :func:`find_embedders` found in a namespace.

    ``ready``: index -> handle of each actor that answered in time, all serving ``info``;
    ``not_ready``: name -> why, for each other ``embedder-*`` actor there (left as it was).
    """

    ready: dict[int, ActorHandle]
    info: ModelInfo
    not_ready: dict[str, str]


async def start_embedders(
    model: ModelSettings,
    batching: BatchSettings,
    pool: PoolSettings,
    *,
    namespace: str | None = None,
    actor_class: type[EmbedderActor] = EmbedderActor,
) -> tuple[list[ActorHandle], ModelInfo]:
    """Start the actors (the caller has joined Ray) and wait until each has loaded the model.

    One actor per ``gpus_per_actor`` GPUs of the cluster unless ``pool.num_actors`` is set, at
    least one; without GPUs each actor takes ``cpus_per_actor`` CPUs.  The actors are named
    ``embedder-{i}`` in ``namespace`` (default: the driver's, from ``ray.init``).  Raises
    ConfigError when a model fails to load, the names are taken, or the actors disagree about
    the model; EmbedderUnavailable when they are not ready within ``ready_timeout_s``.  Nothing
    is left running when it raises.  ``actor_class``: an EmbedderActor subclass to run instead
    (tests inject faults with one).
    """
    gpus = ray.cluster_resources().get("GPU", 0.0)
    count = pool.num_actors or max(1, int(gpus // pool.gpus_per_actor))
    namespace = namespace or ray.get_runtime_context().namespace
    handles: list[ActorHandle] = []
    try:
        for index in range(count):
            handles.append(
                spawn_embedder(
                    model, batching, pool, index, namespace, gpus=bool(gpus), actor_class=actor_class
                )
            )
    except ActorAlreadyExistsError as exc:
        kill_embedders(handles)
        raise EmbeddersRunning(
            f"Ray namespace {namespace!r} already has embedder actors: another consumer runs there; "
            "give each deployment its own ray.namespace"
        ) from exc
    log.info("starting %d embedder actors with %s each", count, actor_resources(pool, bool(gpus)))
    infos = await _wait_started(handles, pool.ready_timeout_s)
    if any(info != infos[0] for info in infos):
        kill_embedders(handles)
        raise ConfigError(f"embedder actors disagree about the model: {infos}")
    stats: list[dict[str, Any]] = await asyncio.gather(*(handle.stats.remote() for handle in handles))
    load_s = max(float(s.get("load_s", 0.0)) for s in stats)  # what every restart of the pool costs
    log.info("embedder pool ready: %d actors, %s; model loaded in %.1fs", count, infos[0], load_s)
    return handles, infos[0]


async def find_embedders(namespace: str, timeout_s: float) -> FoundEmbedders | None:
    """The ``embedder-{i}`` actors of ``namespace`` that are ready within ``timeout_s``; None when
    the namespace has no embedder actor at all.

    Every actor gets the whole ``timeout_s`` (they are asked side by side).  Those that answer are
    returned; each other one is named in ``not_ready`` with why (no answer in time, with its state
    as Ray reports it: e.g. restarting, or pending until a node with its resources joins; or the
    error it answered with), and a warning is logged.  Guarantee: nothing here kills, restarts
    or reconfigures an actor, whatever state it is in; they belong to the process that started them.
    Raises EmbedderUnavailable naming every actor and why when none is ready, ConfigError when the
    ready ones disagree about the model.
    """
    named = list_embedders(namespace)
    if not named:
        return None
    handles: dict[int, ActorHandle] = {}
    not_ready: dict[str, str] = {}
    for index, name in sorted(named.items()):
        try:
            handles[index] = ray.get_actor(name, namespace=namespace)
        except ValueError as exc:  # it died and released its name after the listing
            not_ready[name] = f"gone: {exc}"
    answers = dict(zip(handles, await ask_ready(list(handles.values()), timeout_s), strict=True))
    infos = {i: answer for i, answer in answers.items() if isinstance(answer, ModelInfo)}
    failed = {i: answer for i, answer in answers.items() if not isinstance(answer, ModelInfo)}
    whys = await asyncio.gather(
        *(_why_not_ready(handles[i], answer, timeout_s) for i, answer in failed.items())
    )
    not_ready |= {f"embedder-{i}": why for i, why in zip(failed, whys, strict=True)}
    cause = next((answer for answer in failed.values() if answer is not None), None)
    unready = "; ".join(f"{name}: {why}" for name, why in sorted(not_ready.items()))
    if not infos:
        raise EmbedderUnavailable(
            f"no embedder actor of namespace {namespace!r} is ready (none was touched): {unready}"
        ) from cause
    if len(set(infos.values())) > 1:
        raise ConfigError(f"the embedder actors of namespace {namespace!r} disagree about the model: {infos}")
    if not_ready:
        log.warning(
            "attached to %d of %d embedder actors in namespace %r; not ready (left as they are): %s",
            len(infos),
            len(infos) + len(not_ready),
            namespace,
            unready,
        )
    return FoundEmbedders({i: handles[i] for i in infos}, next(iter(infos.values())), not_ready)


def list_embedders(namespace: str) -> dict[int, str]:
    """``{i: "embedder-{i}"}`` for each embedder actor alive (or restarting) in ``namespace``."""
    named: dict[int, str] = {}
    for actor in ray.util.list_named_actors(all_namespaces=True):
        match = _EMBEDDER_NAME.fullmatch(actor["name"])
        if actor["namespace"] == namespace and match:
            named[int(match[1])] = actor["name"]
    return named


def actor_resources(pool: PoolSettings, gpus: bool) -> dict[str, Any]:
    """The Ray resource options of one embedder actor: GPUs on a GPU cluster, else CPUs; plus custom ones."""
    resources: dict[str, Any] = (
        {"num_gpus": pool.gpus_per_actor} if gpus else {"num_cpus": pool.cpus_per_actor}
    )
    if pool.actor_resources:
        resources["resources"] = dict(pool.actor_resources)
    return resources


def spawn_embedder(
    model: ModelSettings,
    batching: BatchSettings,
    pool: PoolSettings,
    index: int,
    namespace: str,
    *,
    gpus: bool,
    actor_class: type[EmbedderActor] = EmbedderActor,
) -> ActorHandle:
    """Create ``embedder-{index}`` in ``namespace``; it loads its model in the background.

    ``actor_class``: an EmbedderActor subclass to run instead (tests inject faults with one).
    """
    remote = _RemoteEmbedder if actor_class is EmbedderActor else ray.remote(actor_class)
    options = remote.options(
        name=f"embedder-{index}",
        namespace=namespace,
        max_restarts=pool.max_restarts,
        max_concurrency=_MAX_CONCURRENCY,
        lifetime="detached" if pool.detached else None,
        **actor_resources(pool, gpus),
    )
    return cast(ActorHandle, options.remote(model, batching, index, namespace))


async def ask_ready(handles: Sequence[ActorHandle], timeout: float) -> list[ModelInfo | BaseException | None]:
    """Each actor's answer to ``ready`` within ``timeout`` (all asked side by side): its ModelInfo,
    the error it failed with (dead, or its model did not load), or None when it did not answer in
    time.  An actor that Ray is restarting is asked again until then.  Only asks: kills nothing."""
    deadline = time.monotonic() + timeout
    return list(await asyncio.gather(*(_ask_until(handle, deadline) for handle in handles)))


async def _ask_until(handle: ActorHandle, deadline: float) -> ModelInfo | BaseException | None:
    while (left := deadline - time.monotonic()) > 0:
        ref: ObjectRef[ModelInfo] = handle.ready.remote()
        try:
            async with asyncio.timeout(left):
                info: ModelInfo = await ref
                return info
        except TimeoutError:
            ray.cancel(ref)  # a restarting or pending actor would otherwise answer nobody later
            return None
        except ActorUnavailableError:  # restarting: Ray refuses calls until it is back
            await asyncio.sleep(min(_ASK_AGAIN_S, max(0.0, deadline - time.monotonic())))
        except Exception as exc:  # dead, or its model did not load: the caller reports it
            return exc
    return None


async def _wait_started(handles: list[ActorHandle], timeout: float) -> list[ModelInfo]:
    """Every actor's ModelInfo; on the first failure or the timeout kills them all and raises.

    Only for actors the caller has just created (:func:`start_embedders`): they are its own.
    """
    calls: list[asyncio.Future[ModelInfo]] = [asyncio.ensure_future(h.ready.remote()) for h in handles]
    done, pending = await asyncio.wait(calls, timeout=timeout, return_when=asyncio.FIRST_EXCEPTION)
    failed = next((call for call in done if call.exception() is not None), None)
    if failed is None and not pending:
        return [call.result() for call in calls]
    for call in pending:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)  # nothing left unawaited, whatever happened
    kill_embedders(handles)
    if failed is None:
        raise EmbedderUnavailable(f"embedder actors were not ready within {timeout:.0f}s (enough GPUs/CPUs?)")
    exc = failed.exception()
    if isinstance(exc, RayActorError) and exc.actor_init_failed:
        raise ConfigError(f"an embedder actor could not load the model: {exc}") from exc
    raise EmbedderUnavailable(f"an embedder actor failed while starting: {exc}") from exc


async def _why_not_ready(handle: ActorHandle, answer: BaseException | None, timeout: float) -> str:
    """One line: why ``handle`` gave ``answer`` (an error, or None: no answer) instead of its ModelInfo."""
    if answer is None:
        why = f"no answer within {timeout:g}s"
    elif isinstance(answer, RayActorError) and answer.actor_init_failed:
        why = f"could not load the model ({_first_line(answer)})"
    elif isinstance(answer, ActorDiedError):
        why = f"dead ({_first_line(answer)})"
    else:
        why = f"failed: {type(answer).__name__}: {_first_line(answer)}"
    state = await asyncio.to_thread(_ray_state, handle)
    return f"{why}; Ray says {state}" if state else why


def _ray_state(handle: ActorHandle) -> str:
    """The actor's state from Ray's state API (e.g. ``RESTARTING``, ``PENDING_CREATION, needs
    {'GPU': 1.0}``), or "" when the API does not answer (a report only: the dashboard may be off)."""
    try:
        # By id (a handle only carries it privately) and on this driver's cluster: left to find the
        # cluster itself, the state API refuses when a machine runs two Ray clusters.
        address = ray.get_runtime_context().gcs_address
        state = get_actor(handle._actor_id.hex(), address=address, timeout=5)
    except Exception:  # best effort: the caller reports without it
        return ""
    if state is None:
        return ""
    text = str(state.state)
    if state.state in ("PENDING_CREATION", "DEPENDENCIES_UNREADY") and state.required_resources:
        text += f", needs {state.required_resources}"
    if state.num_restarts:
        text += f", restarted {state.num_restarts} time(s)"
    return text


def _first_line(exc: BaseException) -> str:
    """The first non-blank line of ``exc``'s message, at most 300 characters (Ray's run on)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else repr(exc))[:300]


def kill_embedders(handles: Sequence[ActorHandle]) -> None:
    """Kill ``handles`` for good (no restart)."""
    for handle in handles:
        ray.kill(handle, no_restart=True)
