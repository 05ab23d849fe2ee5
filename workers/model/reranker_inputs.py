"""Reranker inputs: the (query, document) pairs as token ids, Qwen3-Reranker's prompt or a cross-encoder's
pair encoding, within the model's length.  Imports neither torch nor transformers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from workers.errors import InputTooLong

if TYPE_CHECKING:
    from tokenizers import Tokenizer

QWEN3_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
    'Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
"""Qwen3-Reranker's prompt up to the pair (its model card; vLLM's qwen3_reranker example)."""
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
"""Qwen3-Reranker's prompt after the pair: the assistant turn with an empty think block."""


def qwen3_body(instruction: str, query: str, document: str) -> str:
    """The user turn of Qwen3-Reranker's prompt (its ``format_instruction``)."""
    return f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}"


class PairIds(list[int]):
    """A pair's model input ids; ``segment_start`` is where the document's segment begins (a
    cross-encoder's token type 1 from there on; ``len`` when the model has one segment)."""

    segment_start: int

    def __init__(self, ids: Sequence[int], segment_start: int | None = None) -> None:
        super().__init__(ids)
        self.segment_start = len(ids) if segment_start is None else segment_start


class PairEncoder:
    """Turns (query, documents) into :class:`PairIds` for one model; tokenizer only, no model."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        kind: Literal["qwen3", "cross-encoder"],
        max_length: int,
        instruction: str,
        truncate: bool,
    ) -> None:
        self._tokenizer, self._kind, self._max_length = tokenizer, kind, max_length
        self._instruction, self._truncate = instruction, truncate
        self._prefix = tokenizer.encode(QWEN3_PREFIX, add_special_tokens=False).ids if kind == "qwen3" else []
        self._suffix = tokenizer.encode(QWEN3_SUFFIX, add_special_tokens=False).ids if kind == "qwen3" else []

    def encode(self, query: str, documents: Sequence[str], instruction: str | None = None) -> list[PairIds]:
        """Model input ids of ``(query, document)`` for each document, in order.

        Qwen3: prefix + body + suffix, each tokenized as Qwen3-Reranker's own code does (the body with
        the tokenizer's special tokens, the others without); ``instruction`` defaults to the
        configured one.  Cross-encoder: the tokenizer's pair encoding.  A pair over :attr:`max_length`
        is refused with InputTooLong (``index`` = the document), unless ``truncate_documents`` is set:
        then the document's end is cut so that the pair fits (the query and prompt never are; a query
        too long by itself is still refused).
        """
        pairs: list[PairIds] = []
        if self._kind == "qwen3":
            task = instruction or self._instruction
            head = len(qwen3_body(task, query, ""))  # characters before the document
            bodies = [qwen3_body(task, query, document) for document in documents]
            room = self._max_length - len(self._prefix) - len(self._suffix)
            for index, e in enumerate(self._tokenizer.encode_batch(bodies, add_special_tokens=True)):
                start = next((i for i, (_, end) in enumerate(e.offsets) if end > head), len(e.ids))
                body = self._fit(index, e.ids, e.special_tokens_mask, start, room)
                pairs.append(PairIds([*self._prefix, *body, *self._suffix]))
        else:
            encoded = self._tokenizer.encode_batch([(query, d) for d in documents], add_special_tokens=True)
            for index, e in enumerate(encoded):
                start = next((i for i, t in enumerate(e.type_ids) if t), len(e.ids))
                pairs.append(
                    PairIds(self._fit(index, e.ids, e.special_tokens_mask, start, self._max_length), start)
                )
        return pairs

    def _fit(self, index: int, ids: list[int], special: list[int], start: int, room: int) -> list[int]:
        """``ids`` (the document's tokens from ``start``, trailing special tokens after them) within
        ``room`` tokens: as they are, or with the document's end cut when ``truncate_documents``;
        else (or when even the part before the document is too long) InputTooLong."""
        if len(ids) <= room:
            return ids
        trailing = len(ids) - next((i + 1 for i in reversed(range(len(ids))) if not special[i]), 0)
        keep = room - trailing
        if not self._truncate or keep <= start:
            raise InputTooLong(index, len(ids) + self._max_length - room, self._max_length)
        return ids[:keep] + ids[len(ids) - trailing :]
