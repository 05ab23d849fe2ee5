"""What the MicroBatcher tests feed a batcher and read back: texts whose first token names them, and
forward-pass rows that repeat a value per text, so a caller can tell which text a row belongs to."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def text(uid: int, length: int) -> list[int]:
    """Token ids of a text of ``length`` tokens whose first token is ``uid``."""
    return [uid] + [0] * (length - 1)


def repeated_rows(values: Sequence[float], dims: Iterable[int]) -> dict[int, np.ndarray]:
    """For each of ``dims``, a float32 ``(len(values), dim)`` array whose row ``r`` is ``values[r]``
    repeated: what the fake forward passes return for texts whose first tokens are ``values``."""
    column = np.array(values, dtype=np.float32)[:, None]
    return {dim: np.repeat(column, dim, axis=1) for dim in dims}
