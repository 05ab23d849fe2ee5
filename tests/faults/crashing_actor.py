"""An embedder actor with a test-only fault hook: marker texts make its process exit mid-batch."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from workers.actor import EmbedderActor
from workers.model.inputs import ModelInput, texts_of

POISON = "POISON-PILL"
_CRASH_ONCE = re.compile(r"CRASH-ONCE-(\w+)")


class CrashingEmbedder(EmbedderActor):
    """Exits its process (``os._exit``, no cleanup: as a segfault or OOM kill would) when a text of
    the call holds ``POISON-PILL`` (every time) or ``CRASH-ONCE-<name>`` (the first time only; the
    crash is recorded as the file ``<name>`` in :attr:`marker_dir`, which survives the restart).

    Set :attr:`marker_dir` on a subclass made by the test.
    """

    marker_dir = ""

    async def embed(self, inputs: list[ModelInput], dims: tuple[int, ...]) -> dict[int, np.ndarray]:
        for text in texts_of(inputs):
            if POISON in text:
                os._exit(1)
            for name in _CRASH_ONCE.findall(text):
                marker = Path(self.marker_dir) / name
                if not marker.exists():
                    marker.touch()
                    os._exit(1)
        return await super().embed(inputs, dims)
