"""What the embedder and the reranker actors share: one model on one device behind a micro-batcher.

Logging to the worker's stderr, the device Ray assigned, metrics tagged with the actor's name (a
restart by Ray counted), tokenization on threads of its own, ingestion requests held (bounded) while the
queue is full rather than refused and sent again, calls in flight and queue depth reported
around every call, the stats an actor answers, and a process exit when the model is broken for good
(only a new process recovers; Ray restarts the actor).  Importing this module imports neither torch
nor transformers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import ray

from workers.batch_launches import LaunchBatch
from workers.batcher import MicroBatcher, RunBatch
from workers.batcher_stats import BatcherStats
from workers.metrics import ActorMetrics
from workers.settings import BatchSettings

log = logging.getLogger(__name__)


def configure_logging() -> None:
    """Let INFO lines reach the worker's stderr (shown in the Ray dashboard's actor logs).

    Left alone when the worker's logging is already set up, e.g. by ``ray.init(logging_config=...)``.
    """
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def was_restarted() -> bool:
    """True inside an actor that Ray restarted (False outside Ray)."""
    if not ray.is_initialized():
        return False
    context = ray.get_runtime_context()
    with warnings.catch_warnings():  # Ray 2.60 flags its own property as deprecated, naming no successor
        warnings.simplefilter("ignore", DeprecationWarning)
        return context.get_actor_id() is not None and context.was_current_actor_reconstructed


def assigned_device() -> str:
    """ "cuda" when Ray assigned this actor a GPU, else "cpu"."""
    # Outside a Ray worker nothing was assigned; asking would make Ray start a local cluster.
    return "cuda" if ray.is_initialized() and ray.get_gpu_ids() else "cpu"


class ModelActor:
    """The batching half of an actor; the subclass loads the model, sets ``_name``, ``_info`` (with a
    ``device``) and ``_load_s``, then calls :meth:`_start_batching`."""

    _name: str
    _info: Any
    _load_s: float

    def _start_batching(
        self,
        run: RunBatch,
        settings: BatchSettings,
        *,
        packed: bool,
        probe: Callable[[], object],
        namespace: str,
        tokenize_threads: int,
        launch: LaunchBatch | None = None,
    ) -> None:
        """The metrics (``namespace``: the Ray namespace the pool named this actor in, a tag), the
        batcher running ``run`` (``launch``: the same split in two, see
        :data:`workers.batch_launches.LaunchBatch`; ``probe``: a pass that must still work right after
        a text failed alone, else the model is broken) and the tokenizer threads."""
        self._metrics = ActorMetrics(namespace, self._name, settings.max_batch_tokens)
        if was_restarted():
            log.warning("%s restarted by Ray after the previous process died", self._name)
            self._metrics.restarted()
        self._inflight = 0
        self._tokenizing = 0  # ingestion requests being tokenized (pending, with those waiting for room)
        self._max_pending = settings.max_pending_requests
        self._tokenize_s = 0.0  # summed over requests; they tokenize side by side in the executor
        self._batcher = MicroBatcher(
            run,
            settings,
            packed=packed,
            launch_batch=launch,
            on_batch=self._on_batch,
            on_failure=self._metrics.forward_failed,
            probe=probe,
            on_broken=self._exit_broken,
        )
        # Tokenization gets its own threads: they overlap the forward pass on the batcher's thread.
        # Only the tokenizer runs on them (the Rust tokenizer encodes from many threads at once);
        # the model itself stays on the batcher's one thread.
        self._tokenize = ThreadPoolExecutor(max_workers=tokenize_threads, thread_name_prefix="tokenize")

    async def _submit(
        self,
        tokenize: Callable[[], Sequence[Sequence[int]]],
        dims: tuple[int, ...],
        *,
        priority: bool,
        adapter: str | None = None,
    ) -> dict[int, np.ndarray]:
        """``tokenize()`` on the tokenizer threads, then its ids through the batcher; the call counts
        as in flight until it is answered, and the load (queue depth, calls in flight and pending) is
        reported on its arrival, after each forward pass and on its way out.

        An ingestion request (``priority=False``) is pending from its arrival until it enters the
        queue: tokenized, then waiting for room while the queue is full.  At most
        ``batching.max_pending_requests`` are pending; one more raises Backpressure before it is
        tokenized.  A pending request is tokenized and sent once, where a refused one would be again on
        every retry of its caller."""
        loop = asyncio.get_running_loop()
        self._inflight += 1
        try:
            pends = not priority and self._max_pending > 0
            if pends:
                pending = self._pending(self._batcher.stats())
                if pending >= self._max_pending:
                    raise self._batcher.refusal(
                        f"{pending} requests are pending (batching.max_pending_requests)"
                    )
            self._tokenizing += pends
            self._report_load()
            try:
                ids, seconds = await loop.run_in_executor(self._tokenize, _timed, tokenize)
            finally:
                self._tokenizing -= pends
            self._tokenize_s += seconds  # the tokenizer's own time, not the wait for a thread
            return await self._batcher.submit(
                ids, dims, priority=priority, adapter=adapter, wait_for_room=pends
            )
        finally:
            self._inflight -= 1
            self._report_load()

    def _pending(self, stats: BatcherStats) -> int:
        """Ingestion requests pending before the queue (``stats``: the batcher's, now): being
        tokenized, or waiting for room."""
        return self._tokenizing + stats.waiting_for_room

    def _report_load(self) -> None:
        stats = self._batcher.stats()
        self._metrics.load(stats.queued_tokens, self._inflight, self._pending(stats))

    def _stats(self, **extra: Any) -> dict[str, Any]:
        """The batcher's counters plus who this actor is (and ``extra``)."""
        return {
            "actor": self._name,
            "pid": os.getpid(),
            "device": self._info.device,
            "load_s": round(self._load_s, 3),
            **extra,
            **dataclasses.asdict(self._batcher.stats()),
        }

    def _exit_broken(self, error: BaseException) -> None:
        """The model fails on every input (e.g. a sticky CUDA error): only a new process recovers."""
        log.error("%s: the model is broken (%r); exiting so that Ray restarts this actor", self._name, error)
        os._exit(1)

    def _on_batch(self, tokens: int, padded: int, seconds: float) -> None:
        self._metrics.batch(tokens, padded, seconds)
        self._report_load()


def _timed(tokenize: Callable[[], Sequence[Sequence[int]]]) -> tuple[Sequence[Sequence[int]], float]:
    """``tokenize()`` and the seconds it took, measured on the thread that runs it."""
    started = time.perf_counter()
    return tokenize(), time.perf_counter() - started
