"""What the chunker needs of a tokenizer, and how it asks: spans to cut on, counts (or ids) to check.

The model's :class:`~workers.model.tokenizer.TextTokenizer` offers all of it; a tokenizer that only
has :meth:`TokenSpans.token_spans` (a test's word splitter) is called text by text, and gives no ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from workers.errors import ConfigError

Spans = list[tuple[int, int]]
"""Character ``(start, end)`` of each token of one text."""

Counted = tuple[int, np.ndarray | None]
"""A text's token count, and its token ids where the chunker keeps them (else None)."""


class TokenSpans(Protocol):
    """The only thing the chunker needs from a tokenizer."""

    def token_spans(self, text: str) -> Spans:
        """``(start, end)`` character offsets of the tokens of ``text``, in order, without special tokens."""
        ...


@runtime_checkable
class BatchTokenSpans(TokenSpans, Protocol):
    """A tokenizer that takes many texts in one call (what the chunker uses when it can)."""

    def token_spans_batch(self, texts: Sequence[str]) -> list[Spans]:
        """:meth:`token_spans` of each text."""
        ...

    def count_tokens_batch(self, texts: Sequence[str]) -> list[int]:
        """``len(token_spans(text))`` of each text."""
        ...


@runtime_checkable
class BatchTokenIds(BatchTokenSpans, Protocol):
    """A tokenizer that also gives the token ids (what the chunker needs to keep them)."""

    def token_ids_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """The ids of each text, special tokens excluded: ``len`` is its count."""
        ...

    def token_spans_and_ids_batch(self, texts: Sequence[str]) -> tuple[list[Spans], list[np.ndarray]]:
        """:meth:`token_spans_batch` and :meth:`token_ids_batch` of the texts, tokenized once."""
        ...


class _OneByOne:
    """:class:`BatchTokenSpans` over a tokenizer that only has :meth:`TokenSpans.token_spans`."""

    def __init__(self, tokenizer: TokenSpans) -> None:
        self.token_spans = tokenizer.token_spans

    def token_spans_batch(self, texts: Sequence[str]) -> list[Spans]:
        return [self.token_spans(text) for text in texts]

    def count_tokens_batch(self, texts: Sequence[str]) -> list[int]:
        return [len(self.token_spans(text)) for text in texts]


class ChunkTokenizer:
    """The chunker's calls to its tokenizer: every one takes a batch of texts.

    With ``keep_ids`` the ids of every text tokenized come along (ConfigError when the tokenizer
    has none); without, only counts, which cost less.
    """

    def __init__(self, tokenizer: TokenSpans, keep_ids: bool) -> None:
        self._batch: BatchTokenSpans = (
            tokenizer if isinstance(tokenizer, BatchTokenSpans) else _OneByOne(tokenizer)
        )
        self._ids: BatchTokenIds | None = None
        if keep_ids:
            if not isinstance(tokenizer, BatchTokenIds):
                raise ConfigError(f"the chunker keeps token ids, but {type(tokenizer).__name__} gives none")
            self._ids = tokenizer

    @property
    def keeps_ids(self) -> bool:
        """Whether :meth:`spans` and :meth:`count` give ids."""
        return self._ids is not None

    def spans(self, texts: Sequence[str]) -> tuple[list[Spans], list[np.ndarray | None]]:
        """The token spans of each text, and its ids where kept."""
        if self._ids is None:
            return self._batch.token_spans_batch(texts), [None] * len(texts)
        spans, ids = self._ids.token_spans_and_ids_batch(texts)
        return spans, list(ids)

    def count(self, texts: Sequence[str]) -> list[Counted]:
        """The token count of each text, with its ids where kept."""
        if self._ids is None:
            return [(count, None) for count in self._batch.count_tokens_batch(texts)]
        return [(len(ids), ids) for ids in self._ids.token_ids_batch(texts)]
