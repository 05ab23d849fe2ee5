"""Isolating the texts of a request that cannot be embedded, so that the rest of it still is.

Two kinds, found differently:

* Texts that crash the embedder actor running them (its process dies): the request runs alone on an
  actor, and one that crashes it alone ``poison_after_crashes`` times (:class:`KillsActors`) is split
  in halves, each run alone, until every such text is alone.
* Texts the model raises on even when each runs alone in a forward pass (out of memory, or another
  error of the model): the actor already split its batches down to them, ran the rest and raised
  :class:`~workers.errors.FailedInputs` naming them; the request is sent again without them.

Importing this module imports neither torch nor Ray.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import numpy as np

from workers.errors import FailedInputs
from workers.model.inputs import ModelInput, text_of

log = logging.getLogger(__name__)

Request = Callable[..., Awaitable[dict[int, np.ndarray]]]
"""``request(texts, alone=...)``: one request to the pool, run alone on an actor when ``alone``;
raises :class:`KillsActors` when it crashed its actor alone too often."""

Isolated = tuple[dict[int, np.ndarray], list[int], dict[int, str]]
"""Vectors of every text (zero rows for poison), the positions of the texts that crash actors, and
those of the texts the model fails on alone with the reason."""


class KillsActors(Exception):
    """A request run alone crashed its actor ``poison_after_crashes`` times."""


async def embed_isolating(
    request: Request, texts: list[ModelInput], dims: tuple[int, ...], alone: bool
) -> Isolated:
    """``request(texts)``, isolating the poison texts as the module docstring says."""
    try:
        return await request(texts, alone=alone), [], {}
    except FailedInputs as exc:  # the actor ran the others; they are asked again without these
        return await _embed_without(request, texts, dims, alone, exc.failures)
    except KillsActors:
        if len(texts) == 1:
            log.warning(
                "isolated a text that crashes embedder actors (%d characters)", len(text_of(texts[0]))
            )
            return {dim: np.zeros((1, dim), dtype=np.float32) for dim in dims}, [0], {}
    middle = len(texts) // 2
    left, left_crashed, left_failed = await embed_isolating(request, texts[:middle], dims, True)
    right, right_crashed, right_failed = await embed_isolating(request, texts[middle:], dims, True)
    vectors = {dim: np.concatenate([left[dim], right[dim]]) for dim in dims}
    failed = left_failed | {middle + i: reason for i, reason in right_failed.items()}
    return vectors, left_crashed + [middle + i for i in right_crashed], failed


async def _embed_without(
    request: Request, texts: list[ModelInput], dims: tuple[int, ...], alone: bool, failures: dict[int, str]
) -> Isolated:
    """:func:`embed_isolating` of ``texts`` with zero rows for ``failures`` (position -> reason)."""
    log.warning("the model failed on %d of %d texts run alone: %s", len(failures), len(texts), failures)
    keep = [i for i in range(len(texts)) if i not in failures]
    vectors = {dim: np.zeros((len(texts), dim), dtype=np.float32) for dim in dims}
    if not keep:
        return vectors, [], dict(failures)
    rest, crashed, failed = await embed_isolating(request, [texts[i] for i in keep], dims, alone)
    for dim in dims:
        vectors[dim][keep] = rest[dim]
    return vectors, [keep[i] for i in crashed], failures | {keep[i]: r for i, r in failed.items()}
