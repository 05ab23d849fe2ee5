"""An embedder actor with a test-only fault hook: forward passes run out of memory (injected, CPU).

The hook is a torch forward pre-hook on the model's module, so the error comes from inside the
forward pass exactly where a CUDA out-of-memory would: it is ``torch.OutOfMemoryError``, raised when

* two or more inputs of the batch hold more than :data:`LONG_TOKENS` real tokens (big texts that fit
  one at a time but not together), or
* an input holds the word :data:`TOO_BIG` (a text that does not fit even alone).
"""

from __future__ import annotations

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
