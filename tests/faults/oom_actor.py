"""Embedder actors with test-only fault hooks inside the forward pass (injected, CPU).

:class:`OutOfMemoryEmbedder` runs out of memory; :class:`StickyErrorEmbedder` breaks for good.

Each hook is a torch forward pre-hook on the model's module, so the error comes from inside the
forward pass exactly where a CUDA error would.  The out-of-memory is ``torch.OutOfMemoryError``, raised
when

* two or more inputs of the batch hold more than :data:`LONG_TOKENS` real tokens (big texts that fit
  one at a time but not together), or
* an input holds the word :data:`TOO_BIG` (a text that does not fit even alone).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from workers.actor import EmbedderActor

LONG_TOKENS = 24
TOO_BIG = "gigantoblob"


class OutOfMemoryEmbedder(EmbedderActor):
    """:class:`EmbedderActor` whose model runs out of memory as the module docstring says."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._model.module.register_forward_pre_hook(self._out_of_memory, with_kwargs=True)

    def _out_of_memory(self, _: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        lengths = mask.sum(dim=1)
        long = int((lengths > LONG_TOKENS).sum())
        if long >= 2:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory (injected: {long} inputs over {LONG_TOKENS} tokens)"
            )
        for row, row_mask in zip(ids, mask, strict=True):
            if TOO_BIG in self._model.tokenizer.decode(row[row_mask.bool()].tolist()).replace(" ", ""):
                raise torch.OutOfMemoryError("CUDA out of memory (injected: an input too big to fit alone)")


STICKY = "stickyfault"


class StickyErrorEmbedder(EmbedderActor):
    """:class:`EmbedderActor` whose device breaks for good, as after a device-side assert: once a text
    holding :data:`STICKY` ran (the first time only, across restarts: the file ``sticky`` in
    :attr:`marker_dir` records it), every forward pass of this process raises.  The text itself is
    fine: in a fresh process it embeds.  Set :attr:`marker_dir` on a subclass made by the test."""

    marker_dir = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._device_broken = False
        self._model.module.register_forward_pre_hook(self._sticky_error, with_kwargs=True)

    def _sticky_error(self, _: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        marker = Path(self.marker_dir) / "sticky"
        if not self._device_broken and not marker.exists():
            ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
            texts = (
                self._model.tokenizer.decode(row[m.bool()].tolist()) for row, m in zip(ids, mask, strict=True)
            )
            if any(STICKY in text.replace(" ", "") for text in texts):
                marker.touch()
                self._device_broken = True
        if self._device_broken:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
