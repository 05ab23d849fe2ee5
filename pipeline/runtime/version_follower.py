"""`serve` follows `versions switch`: the replicas of the serving version, looked up again every second."""

from __future__ import annotations

import asyncio
import contextlib
import time

from pipeline.milvus.errors import SinkUnavailable
from pipeline.milvus.model_stamp import stamp_of
from pipeline.milvus.sink import MilvusSink
from pipeline.runtime.versions import readable_replicas, serving_settings
from pipeline.settings import Settings
from workers.errors import ConfigError
from workers.model.embedding_model import ModelInfo


class VersionFollower:
    """The sink over the serving version's replicas, for a long-running reader (the HTTP API).

    Guarantees: each :meth:`sink` call returns the replicas of one version (a request that reads two
    replicas, as a funnel does, reads both from it); a switch is followed within ``interval_s``; a
    version whose replicas another model made is never read: :meth:`sink` raises ConfigError saying so
    until the server is restarted with that model (or the switch undone).  While Milvus cannot be asked,
    the version last seen is kept.  Sinks opened for a switch stay open (a request may still be reading
    them) until :meth:`close`.
    """

    def __init__(
        self,
        base: Settings,
        info: ModelInfo,
        sink: MilvusSink,
        prefix: str,
        interval_s: float = 1.0,
        *,
        adapter: str | None = None,
    ) -> None:
        """``base``: the settings as configured; ``sink``: the replicas of version prefix ``prefix``,
        read now; ``info``: the model the queries are embedded with, with LoRA adapter ``adapter`` (a
        version whose replicas record another adapter is refused like one of another model)."""
        self._base = base
        self._info = info
        self._adapter = adapter
        self._sink = self._given = sink
        self._prefix = prefix
        self._interval_s = interval_s
        self._checked = time.monotonic()
        self._refusal: ConfigError | None = None
        self._retired: list[MilvusSink] = []

    async def sink(self) -> MilvusSink:
        """The sink of the serving version (ConfigError when another model made it)."""
        if time.monotonic() - self._checked >= self._interval_s:
            self._checked = time.monotonic()
            # Milvus down: the search itself will say so, on the version last seen.
            with contextlib.suppress(SinkUnavailable):
                await self._look_up()
        if self._refusal is not None:
            raise self._refusal
        return self._sink

    async def _look_up(self) -> None:
        target = await serving_settings(self._base, attempts=1)
        prefix = target.milvus.collection_prefix
        if prefix == self._prefix:
            self._refusal = None
            return
        dims = target.replicas.replica_dims(self._info.native_dim)
        try:
            dims = await asyncio.to_thread(
                readable_replicas, self._base, target, stamp_of(self._info, target.model, self._adapter), dims
            )
        except ConfigError as exc:
            self._refusal = ConfigError(
                f"the serving version is now {prefix}, made by another model than this server's "
                f"{self._info.name}: restart `python -m pipeline serve` with that model. {exc}"
            )
            return
        self._retired.append(self._sink)
        self._sink, self._prefix, self._refusal = MilvusSink(target.milvus, dims), prefix, None

    def close(self) -> None:
        """Close the sinks this follower opened (not the one it was given)."""
        for sink in {*self._retired, self._sink} - {self._given}:
            sink.close()
