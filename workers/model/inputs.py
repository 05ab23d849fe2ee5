"""A model input as the embedder actors take it: a text, or a text with its token ids already counted.

The consumer's chunker tokenizes every chunk anyway (it must count it to cut it), with the same
tokenizer files as the actors; sending those ids along spares the actors a second tokenization of
every text, on the GPU hosts' CPUs.  Importing this module imports neither torch nor transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True, eq=False)
class TokenizedText:
    """``text`` and ``ids``: the model's tokenizer's ids of ``text`` alone, special tokens excluded
    (an int32 or int64 vector).

    The embedder adds the special tokens and checks the ids (in the vocabulary, the input within the
    model's length) instead of tokenizing ``text``; ``text`` names the input in errors, dead letters
    and logs, and is what an embedder without a tokenizer of its own (a remote endpoint) embeds.
    """

    text: str
    ids: np.ndarray

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled with its ids as plain bytes: Ray ships every ndarray of a request as an out-of-band
        # buffer of its own, which for thousands of short rows costs several times the texts' own
        # serialization; in-band bytes cost about what the text does.
        return _tokenized_text, (self.text, self.ids.tobytes(), self.ids.dtype.str)


def _tokenized_text(text: str, ids: bytes, dtype: str) -> TokenizedText:
    return TokenizedText(text, np.frombuffer(ids, dtype=np.dtype(dtype)))


ModelInput = str | TokenizedText
"""What one row of an embed request is."""


def text_of(item: ModelInput) -> str:
    """The text of ``item``."""
    return item if isinstance(item, str) else item.text


def texts_of(items: Sequence[ModelInput]) -> list[str]:
    """The text of each of ``items``."""
    return [text_of(item) for item in items]
