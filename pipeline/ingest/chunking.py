"""Token-aware splitting of documents into chunks that each fit the embedding model.

A document is tokenized once; chunk boundaries are chosen on the token spans
(:mod:`pipeline.ingest.chunk_units`), preferring, strongest first: a markdown heading, a blank line,
a line break, a sentence end, whitespace, and only as a last resort a cut between two tokens.  Every
chunk is then tokenized on its own to count it exactly, because a substring can tokenize differently
from its place in the whole (a word cut in two, a lost leading space); a chunk that comes out too
long is cut shorter.

Speed: the chunks of a document are first cut as if every count came out within the limit, and all
of them (of many documents, with :meth:`Chunker.split_many`) are counted in one tokenizer call; only
a document where some count does not fit is cut again step by step.  Both ways give the same chunks:
the step-by-step cut takes the same path as long as every count fits.  A tokenizer with batch calls
(the model's fast tokenizer, whose batch calls run in Rust threads without the GIL) gets whole
batches; any other is called text by text (:mod:`pipeline.ingest.chunk_tokens`).  With
``keep_token_ids`` each chunk carries the ids the tokenizer gave it when counting it, so the embedder
does not tokenize it again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from pipeline.ingest.chunk_tokens import ChunkTokenizer, Counted, TokenSpans
from pipeline.ingest.chunk_units import TokenUnits, cut, overlap_start, token_units
from workers.errors import ConfigError, PoisonInput

DEFAULT_MAX_CHARS = 16_000
"""At most 64,000 UTF-8 bytes per chunk, below Milvus' 65,535-byte VARCHAR limit."""

_FRAME_ATTEMPTS = 4
"""Cuts tried before a frame that keeps pushing chunks over the limit is refused."""

_BATCH_CHARS = 2_000_000
"""Characters tokenized in one batch call: bounds the token spans held at once."""

Frame = Callable[[str], str]
"""What is put around a chunk before the model sees it (e.g. an instruction template)."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a document: ``token_count`` is the tokenizer's count of ``text`` on its own (of
    the framed text, with a frame); ``token_ids`` are those tokens, where the chunker keeps them."""

    text: str
    index: int
    token_count: int
    token_ids: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(slots=True)
class _Document:
    """One text being chunked: its spans, its units (built once, for every cut of it)."""

    text: str
    spans: list[tuple[int, int]]
    ids: np.ndarray | None = None
    units: TokenUnits | None = None

    @property
    def counted(self) -> Counted:
        """The whole text's count (and ids): a chunk that is the whole text takes them."""
        return len(self.spans), self.ids


Pieces = list[tuple[str, Counted]]
"""Each chunk's text and token count (with its ids where kept)."""


class Chunker:
    """Splits documents into chunks of at most ``max_tokens`` tokens.

    Guarantees, for any text: each chunk holds 1..``max_tokens`` tokens as counted by the
    tokenizer on the chunk's own text, at most ``max_chars`` characters, is neither empty nor
    starts or ends with whitespace; a text that fits both limits whole is one chunk; chunks follow
    the document in order and, without overlap, their concatenation is the document minus
    whitespace at chunk boundaries (a character the tokenizer yields no token for may be dropped
    only where it forms a chunk of its own); the result depends on the text alone.  With
    ``overlap_tokens`` every chunk but the first starts with up to that many tokens from the end of
    the previous one, beginning at a word where one is near, unless it starts at a heading.  A text
    without tokens (e.g. only whitespace) gives ``[]``.  With ``keep_token_ids`` (the tokenizer must
    give ids) every chunk's ``token_ids`` are the tokenizer's ids of its text (framed, with a frame)
    on its own, ``token_count`` of them.  It holds no state between calls: one instance may split in
    several threads at once (if its tokenizer may be called so).
    """

    def __init__(
        self,
        tokenizer: TokenSpans,
        max_tokens: int,
        overlap_tokens: int = 0,
        *,
        max_chars: int = DEFAULT_MAX_CHARS,
        keep_token_ids: bool = False,
    ) -> None:
        if max_tokens < 1:
            raise ConfigError(f"chunking max_tokens must be at least 1, got {max_tokens}")
        if not 0 <= overlap_tokens * 2 < max_tokens:
            raise ConfigError(
                f"chunking overlap_tokens must be >= 0 and below half of max_tokens ({max_tokens}), "
                f"got {overlap_tokens}"
            )
        if max_chars < 1:
            raise ConfigError(f"chunking max_chars must be at least 1, got {max_chars}")
        self._tokenizer = ChunkTokenizer(tokenizer, keep_token_ids)
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.max_chars = max_chars

    @property
    def keeps_token_ids(self) -> bool:
        """Whether chunks carry their ``token_ids``."""
        return self._tokenizer.keeps_ids

    def split(self, text: str, frame: Frame | None = None) -> list[Chunk]:
        """The chunks of ``text``, indexed from 0.

        With ``frame`` (e.g. an instruction template around each chunk), each *framed* chunk holds at
        most ``max_tokens`` tokens, counted on the framed text itself, and ``token_count`` is that
        count: the chunks are cut shorter by what the frame costs, so the model never has to
        truncate.  Raises PoisonInput if characters the tokenizer cannot separate hold more than
        the room left (e.g. one emoji as four byte tokens with ``max_tokens=3``), or if the frame
        alone leaves no room.
        """
        (spans,), (ids,) = self._tokenizer.spans([text])
        return self._split(_Document(text, spans, ids), frame)

    def split_many(self, items: Sequence[tuple[str, Frame | None]]) -> list[list[Chunk] | PoisonInput]:
        """:meth:`split` of each ``(text, frame)``, or the PoisonInput it raises, in the order given.

        The same chunks as one :meth:`split` call per item, with far fewer tokenizer calls: the
        texts are tokenized together, and the chunks of the unframed ones counted together.
        """
        results: list[list[Chunk] | PoisonInput] = []
        for batch in _batches(items):
            texts = [text for text, _ in batch]
            documents = list(map(_Document, texts, *self._tokenizer.spans(texts)))
            plain = [i for i, (_, frame) in enumerate(batch) if frame is None]
            outcomes: dict[int, list[Chunk] | PoisonInput] = {}
            for i, pieces in zip(
                plain, self._pieces_many([documents[i] for i in plain], self.max_tokens), strict=True
            ):
                outcomes[i] = pieces if isinstance(pieces, PoisonInput) else _chunks(pieces)
            for i, (_, frame) in enumerate(batch):
                if frame is not None:
                    try:
                        outcomes[i] = self._split(documents[i], frame)
                    except PoisonInput as exc:
                        outcomes[i] = exc
            results.extend(outcomes[i] for i in range(len(batch)))
        return results

    def count_tokens(self, text: str) -> int:
        """The tokenizer's count of ``text``, special tokens excluded."""
        return self._tokenizer.count([text])[0][0] if text else 0

    def _split(self, document: _Document, frame: Frame | None) -> list[Chunk]:
        if frame is None:
            return _chunks(_raise(self._pieces_many([document], self.max_tokens)[0]))
        # A frame's tokens do not simply add to a chunk's (BPE merges across the seam), so the
        # framed count is measured and the room shrunk by any excess until every chunk fits.
        reserve = self.count_tokens(frame(""))
        for _ in range(_FRAME_ATTEMPTS):
            room = self.max_tokens - reserve
            if room < 1:
                raise PoisonInput(f"the instruction takes {reserve} of a chunk's {self.max_tokens} tokens")
            pieces = [piece for piece, _ in _raise(self._pieces_many([document], room)[0])]
            framed = self._tokenizer.count([frame(piece) for piece in pieces])
            excess = max((count for count, _ in framed), default=0) - self.max_tokens
            if excess <= 0:
                return _chunks(list(zip(pieces, framed, strict=True)))
            reserve += excess
        raise PoisonInput(
            f"framed chunks still exceed max_tokens={self.max_tokens} after {_FRAME_ATTEMPTS} cuts"
        )

    def _pieces_many(self, documents: Sequence[_Document], max_tokens: int) -> list[Pieces | PoisonInput]:
        """The pieces of each document (see :meth:`_pieces`), their counts taken in one batch call.

        Each document is first cut assuming every count fits; where one does not (or the cut
        meets characters it cannot separate), the document is cut again step by step, reusing the
        counts already taken.
        """
        drafts = [self._draft(document, max_tokens) for document in documents]
        unknown = list(
            dict.fromkeys(piece for draft in drafts if draft for piece, count in draft if count is None)
        )
        counted = dict(zip(unknown, self._tokenizer.count(unknown), strict=True))
        results: list[Pieces | PoisonInput] = []
        for document, draft in zip(documents, drafts, strict=True):
            if draft is not None:
                pieces = [(piece, counted[piece] if count is None else count) for piece, count in draft]
                if all(0 < count <= max_tokens for _, (count, _) in pieces):
                    results.append(pieces)
                    continue
            try:
                results.append(list(self._pieces(document, max_tokens, counted)))
            except PoisonInput as exc:
                results.append(exc)
        return results

    def _draft(self, document: _Document, max_tokens: int) -> list[tuple[str, Counted | None]] | None:
        """The cuts :meth:`_pieces` makes if every piece counts 1..``max_tokens`` tokens; each piece
        with its count where already known (the whole text), else None.  None where the cut meets
        characters it cannot separate or a piece without characters: then only :meth:`_pieces` knows."""
        text, spans = document.text, document.spans
        if not spans:
            return []
        units = self._units(document)
        n = len(units.cum) - 1
        pos = first = 0
        draft: list[tuple[str, Counted | None]] = []
        while pos < n:
            end = cut(units, first, pos, max_tokens, self.max_chars)
            if end is None:
                if first == pos:
                    return None
                first = pos
                continue
            piece = text[units.bounds[first] : units.bounds[end]].strip()
            if not piece:
                return None
            whole = first == 0 and end == n and len(piece) == len(text)
            draft.append((piece, document.counted if whole else None))
            first = overlap_start(units, pos, end, self.overlap_tokens)
            pos = end
        return draft

    def _units(self, document: _Document) -> TokenUnits:
        if document.units is None:
            document.units = token_units(document.text, document.spans, self.max_chars)
        return document.units

    def _pieces(
        self, document: _Document, max_tokens: int, counted: dict[str, Counted] | None = None
    ) -> Iterator[tuple[str, Counted]]:
        """The text and token count of each chunk of at most ``max_tokens`` tokens, step by step.

        ``counted`` holds token counts already taken of some texts."""
        text, spans = document.text, document.spans
        if not spans:
            return
        counted = counted or {}
        units = self._units(document)
        n = len(units.cum) - 1
        pos = first = 0  # the chunk's new content starts at unit `pos`, its overlap at `first`
        budget = max_tokens
        while pos < n:
            end = cut(units, first, pos, budget, self.max_chars)
            if end is None:
                if first == pos:
                    unit = text[units.bounds[pos] : units.bounds[pos + 1]]
                    raise PoisonInput(
                        f"{unit[:20]!r} forms {units.cum[pos + 1] - units.cum[pos]} inseparable tokens, "
                        f"more than max_tokens={max_tokens}"
                    )
                first, budget = pos, max_tokens  # the overlap leaves no room: drop it
                continue
            piece = text[units.bounds[first] : units.bounds[end]].strip()
            if first == 0 and end == n and len(piece) == len(text):
                tokens = document.counted  # the whole text, already tokenized: most events are one chunk
            elif piece in counted:
                tokens = counted[piece]
            else:
                (tokens,) = self._tokenizer.count([piece])
            count = tokens[0]
            if count > max_tokens:
                # The piece tokenizes to more than its spans said: retry shorter, but never
                # shorter than the first unit of new content.
                if end > pos + 1:
                    span_tokens = units.cum[end] - units.cum[first]
                    excess = count - max_tokens
                    budget = max(units.cum[pos + 1] - units.cum[first], span_tokens - max(1, excess))
                    continue
                if first < pos:
                    first = pos
                    continue
                if len(piece) == len(text):
                    raise PoisonInput(f"{piece[:20]!r} tokenizes to {count} tokens, more than max_tokens")
                # One unit (e.g. a piece of a huge unknown token) that is many tokens on its own:
                # chunk it by its own tokens.
                (piece_spans,), (piece_ids,) = self._tokenizer.spans([piece])
                yield from self._pieces(_Document(piece, piece_spans, piece_ids), max_tokens)
                first = end
            elif count:
                yield piece, tokens
                first = overlap_start(units, pos, end, self.overlap_tokens)
            else:
                first = end  # only whitespace or characters the tokenizer ignores
            pos, budget = end, max_tokens


def _chunks(pieces: Pieces) -> list[Chunk]:
    return [Chunk(piece, i, count, ids) for i, (piece, (count, ids)) in enumerate(pieces)]


def _raise(pieces: Pieces | PoisonInput) -> Pieces:
    if isinstance(pieces, PoisonInput):
        raise pieces
    return pieces


def _batches(items: Sequence[tuple[str, Frame | None]]) -> Iterator[Sequence[tuple[str, Frame | None]]]:
    """Consecutive runs of ``items`` of about :data:`_BATCH_CHARS` characters (at least one item)."""
    start = chars = 0
    for i, (text, _) in enumerate(items):
        if chars and chars + len(text) > _BATCH_CHARS:
            yield items[start:i]
            start, chars = i, 0
        chars += len(text)
    if start < len(items):
        yield items[start:]
