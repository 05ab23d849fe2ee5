"""What the MicroBatcher tests feed a batcher and read back: texts whose first token names them, and
forward-pass rows that repeat a value per text, so a caller can tell which text a row belongs to."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def text(uid: int, length: int) -> list[int]:
    """Token ids of a text of ``length`` tokens whose first token is ``uid``."""
    return [uid] + [0] * (length - 1)


def repeated_rows(values: Sequence[float], dims: Iterable[int]) -> dict[int, np.ndarray]:
    """For each of ``dims``, a float32 ``(len(values), dim)`` array whose row ``r`` is ``values[r]``
    repeated: what the fake forward passes return for texts whose first tokens are ``values``."""
    column = np.array(values, dtype=np.float32)[:, None]
    return {dim: np.repeat(column, dim, axis=1) for dim in dims}


class GatedForward:
    """A fake forward pass that records, per batch, the first token (the uid) of each text and the
    batch's adapter.  Row ``r`` is ``ids[r][0] + offsets[adapter]`` repeated (no ``offsets``: the uid);
    with a ``gate``, every pass waits for it (10 s at most); ``started`` is set by the first pass."""

    def __init__(
        self, gate: threading.Event | None = None, offsets: Mapping[str | None, float] | None = None
    ) -> None:
        self.batches: list[list[int]] = []
        self.adapters: list[str | None] = []
        self.gate = gate
        self.started = threading.Event()
        self._offsets = offsets

    def __call__(
        self, ids: list[Sequence[int]], dims: tuple[int, ...], adapter: str | None = None
    ) -> Mapping[int, np.ndarray]:
        self.started.set()
        if self.gate is not None:
            self.gate.wait(10)
        self.adapters.append(adapter)
        self.batches.append([seq[0] for seq in ids])
        offset = 0.0 if self._offsets is None else self._offsets[adapter]
        return repeated_rows([seq[0] + offset for seq in ids], dims)

    def adapter_batches(self) -> list[tuple[str | None, list[int]]]:
        """``(adapter, uids)`` of every batch, in the order the passes ran."""
        return list(zip(self.adapters, self.batches, strict=True))

    def batch_of(self, uid: int) -> int:
        """The index of the pass that embedded the text ``uid``."""
        return next(i for i, batch in enumerate(self.batches) if uid in batch)
