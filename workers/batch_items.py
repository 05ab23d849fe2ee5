"""What a micro-batcher holds per request and per text (see :mod:`workers.batcher`)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from workers.errors import FailedInputs


@dataclass(eq=False)
class Request:
    """One submit: its texts' rows fill ``out``; the last row done completes ``future``."""

    dims: tuple[int, ...]
    future: asyncio.Future[dict[int, np.ndarray]]
    out: dict[int, np.ndarray]
    remaining: int
    failed: dict[int, str] = field(default_factory=dict)  # row -> why the model fails on it alone
    adapter: str | None = None  # the LoRA adapter its texts run with (None: the base model)

    def fail(self, error: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(error)

    def row_done(self) -> None:
        """One more row has its vector or its failure; the last one completes the request."""
        self.remaining -= 1
        if self.remaining == 0 and not self.future.done():
            if self.failed:
                self.future.set_exception(FailedInputs(self.failed))
            else:
                self.future.set_result(self.out)


@dataclass(eq=False, slots=True)
class Item:
    """One text of a request, waiting for a batch."""

    request: Request
    row: int
    ids: Sequence[int]
    enqueued: float

    @property
    def adapter(self) -> str | None:
        """The adapter its batch must run with: a batch never mixes adapters."""
        return self.request.adapter

    def abandoned(self) -> bool:
        """The caller gave up, or another text of its request failed."""
        return self.request.future.done()


def forward_args(batch: Sequence[Item]) -> tuple[tuple[int, ...], list[Sequence[int]], str | None]:
    """The union of ``batch``'s requests' dims (largest first), its ids, and its one adapter (the
    queue cuts a batch to one adapter)."""
    dims = tuple(sorted({dim for item in batch for dim in item.request.dims}, reverse=True))
    return dims, [item.ids for item in batch], batch[0].adapter
