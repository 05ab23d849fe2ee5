"""The chunker as it was before batching (commit a52d0fd), frozen: the oracle of test_chunking_same.

Differential tests check that :class:`pipeline.ingest.chunking.Chunker` still cuts exactly these
chunks.  Change this copy only together with a deliberate change of where chunks are cut.

Token-aware splitting of one document into chunks that each fit the embedding model.

The document is tokenized once; chunk boundaries are chosen on the token spans, preferring,
strongest first: a markdown heading, a blank line, a line break, a sentence end, whitespace,
and only as a last resort a cut between two tokens.  Every chunk is then tokenized on its own
to count it exactly, because a substring can tokenize differently from its place in the whole
(a word cut in two, a lost leading space); a chunk that comes out too long is cut shorter.
All work per token is done in C (list operations, regular expressions over the text), so a
10 MB document costs little beyond its two tokenizations.
"""

from __future__ import annotations

import operator
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import Protocol

from workers.errors import ConfigError, PoisonInput

DEFAULT_MAX_CHARS = 16_000
"""At most 64,000 UTF-8 bytes per chunk, below Milvus' 65,535-byte VARCHAR limit."""

_FRAME_ATTEMPTS = 4
"""Cuts tried before a frame that keeps pushing chunks over the limit is refused."""

# Boundary strengths: how good a place to end a chunk is, weakest first.
_HARD, _SPACE, _SENTENCE, _LINE, _PARAGRAPH, _HEADING = range(6)

_HEADING_LINE = re.compile(r"^ {0,3}#{1,6}(?:[ \t]|$)", re.MULTILINE)
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})", re.MULTILINE)
_LINE_BREAKS = re.compile(r"\n\s*")
# A full stop before whitespace (after up to two closing quotes or brackets), or a CJK one,
# which needs no space after it.
_SENTENCE_END = re.compile(r"[.!?…][\"')\]}»”’」』]{0,2}(?=\s)|[。！？]")


class TokenSpans(Protocol):
    """The only thing the chunker needs from a tokenizer."""

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """``(start, end)`` character offsets of the tokens of ``text``, in order, without special tokens."""
        ...


@dataclass(frozen=True, slots=True)
class Chunk:
    """One piece of a document: ``token_count`` is the tokenizer's count of ``text`` on its own."""

    text: str
    index: int
    token_count: int


@dataclass(slots=True)
class _Units:
    """The document as a sequence of units, the atoms of chunking.

    A unit is one token, or tokens that share characters, or a ``max_chars`` slice of a longer
    one.  Unit ``k`` owns the characters ``bounds[k]:bounds[k + 1]`` (its tokens and the gap after
    them), holds ``cum[k + 1] - cum[k]`` tokens, and ``strength[k]`` rates a chunk boundary
    just before it.
    """

    bounds: list[int]
    cum: list[int]
    strength: list[int]


def _fences(text: str) -> list[int]:
    """Sorted offsets where fenced code blocks open and close (an unclosed one runs to the end)."""
    marks: list[int] = []
    opener = ""
    for match in _FENCE.finditer(text):
        fence = match.group(1)
        if not opener:
            opener = fence
            marks.append(match.start())
        elif fence[0] == opener[0] and len(fence) >= len(opener):
            opener = ""
            marks.append(match.end())
    return marks


def _group(spans: list[tuple[int, int]]) -> tuple[list[int], list[int], list[int]]:
    """Starts, ends and token counts of the units: tokens sharing characters are one unit.

    Byte-level tokenizers give every byte token of one character the same span; no cut may
    fall between those.  Most tokenizers have no such tokens, which the fast path checks in C.
    """
    starts = list(map(operator.itemgetter(0), spans))
    ends = list(map(operator.itemgetter(1), spans))
    if not any(map(operator.lt, starts[1:], ends)) and not any(map(operator.le, starts[1:], starts)):
        return starts, ends, [1] * len(starts)
    starts, ends = [], []
    counts: list[int] = []
    for start, end in spans:
        if starts and (start < ends[-1] or start <= starts[-1]):
            counts[-1] += 1
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
            counts.append(1)
    return starts, ends, counts


def _strengths(text: str, starts: list[int], ends: list[int]) -> list[int]:
    """``strength[k]`` rates a chunk boundary just before unit ``k``.

    Touching tokens are a hard cut and a gap is whitespace; the few stronger boundaries are
    found by scanning the text, so the work per token stays in C.
    """
    n = len(starts)
    strength: list[int] = [_HARD, *map(operator.gt, starts[1:], ends)]

    def raise_before(offset: int, level: int) -> None:
        # The boundary belongs before the first unit starting at or after `offset`.
        k = bisect_left(starts, offset)
        if 0 < k < n and strength[k] < level:
            strength[k] = level

    for match in _SENTENCE_END.finditer(text):
        raise_before(match.end(), _SENTENCE)
    for match in _LINE_BREAKS.finditer(text):
        raise_before(match.end(), _PARAGRAPH if match.group().count("\n") > 1 else _LINE)
    fences = _fences(text)
    for match in _HEADING_LINE.finditer(text):
        if bisect_right(fences, match.start()) % 2 == 0:  # not a comment inside a code block
            raise_before(match.start(), _HEADING)
    return strength


def _units(text: str, spans: list[tuple[int, int]], max_chars: int) -> _Units:
    starts, ends, counts = _group(spans)
    strength = _strengths(text, starts, ends)
    bounds = [0, *starts[1:], len(text)]
    if max(map(operator.sub, bounds[1:], bounds)) > max_chars:
        bounds, counts, strength = _split_long_units(bounds, counts, strength, max_chars)
    return _Units(bounds, [0, *accumulate(counts)], strength)


def _split_long_units(
    bounds: list[int], counts: list[int], strength: list[int], max_chars: int
) -> tuple[list[int], list[int], list[int]]:
    """Cut units longer than ``max_chars`` (a huge unknown token, a long run of ignored characters).

    The pieces after the first are estimated at one token each; the exact count of every chunk
    is checked anyway.
    """
    new_bounds, new_counts, new_strength = [0], [], []
    for k, count in enumerate(counts):
        start, end = bounds[k], bounds[k + 1]
        new_counts.append(count)
        new_strength.append(strength[k])
        for cut in range(start + max_chars, end, max_chars):
            new_bounds.append(cut)
            new_counts.append(1)
            new_strength.append(_HARD)
        new_bounds.append(end)
    return new_bounds, new_counts, new_strength


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
    without tokens (e.g. only whitespace) gives ``[]``.
    """

    def __init__(
        self,
        tokenizer: TokenSpans,
        max_tokens: int,
        overlap_tokens: int = 0,
        *,
        max_chars: int = DEFAULT_MAX_CHARS,
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
        self._tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.overlap_tokens = overlap_tokens
        self.max_chars = max_chars

    def split(self, text: str, frame: Callable[[str], str] | None = None) -> list[Chunk]:
        """The chunks of ``text``, indexed from 0.

        With ``frame`` (e.g. an instruction template around each chunk), each *framed* chunk holds at
        most ``max_tokens`` tokens, counted on the framed text itself, and ``token_count`` is that
        count: the chunks are cut shorter by what the frame costs, so the model never has to
        truncate.  Raises PoisonInput if characters the tokenizer cannot separate hold more than
        the room left (e.g. one emoji as four byte tokens with ``max_tokens=3``), or if the frame
        alone leaves no room.
        """
        if frame is None:
            return [
                Chunk(piece, i, count) for i, (piece, count) in enumerate(self._pieces(text, self.max_tokens))
            ]
        # A frame's tokens do not simply add to a chunk's (BPE merges across the seam), so the
        # framed count is measured and the room shrunk by any excess until every chunk fits.
        reserve = self.count_tokens(frame(""))
        for _ in range(_FRAME_ATTEMPTS):
            room = self.max_tokens - reserve
            if room < 1:
                raise PoisonInput(f"the instruction takes {reserve} of a chunk's {self.max_tokens} tokens")
            pieces = [piece for piece, _ in self._pieces(text, room)]
            counts = [self.count_tokens(frame(piece)) for piece in pieces]
            excess = max(counts, default=0) - self.max_tokens
            if excess <= 0:
                return [
                    Chunk(piece, i, count)
                    for i, (piece, count) in enumerate(zip(pieces, counts, strict=True))
                ]
            reserve += excess
        raise PoisonInput(
            f"framed chunks still exceed max_tokens={self.max_tokens} after {_FRAME_ATTEMPTS} cuts"
        )

    def count_tokens(self, text: str) -> int:
        """The tokenizer's count of ``text``, special tokens excluded."""
        return len(self._tokenizer.token_spans(text)) if text else 0

    def _pieces(self, text: str, max_tokens: int) -> Iterator[tuple[str, int]]:
        """The text and token count of each chunk of at most ``max_tokens`` tokens."""
        spans = self._tokenizer.token_spans(text)
        if not spans:
            return
        units = _units(text, spans, self.max_chars)
        n = len(units.cum) - 1
        pos = first = 0  # the chunk's new content starts at unit `pos`, its overlap at `first`
        budget = max_tokens
        while pos < n:
            end = self._cut(units, first, pos, budget)
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
                count = len(spans)  # the whole text, already tokenized: most events are one chunk
            else:
                count = len(self._tokenizer.token_spans(piece)) if piece else 0
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
                yield from self._pieces(piece, max_tokens)
                first = end
            elif count:
                yield piece, count
                first = self._overlap_start(units, pos, end)
            else:
                first = end  # only whitespace or characters the tokenizer ignores
            pos, budget = end, max_tokens

    def _cut(self, units: _Units, first: int, pos: int, budget: int) -> int | None:
        """Where the chunk starting at unit ``first`` (new content at ``pos``) ends, exclusive.

        None when not even unit ``pos`` fits.  A heading ends the chunk once it holds a quarter
        of its room in new content; otherwise the strongest boundary past that quarter wins, the
        latest among equals, so small paragraphs are packed together.
        """
        cum, bounds, strength = units.cum, units.bounds, units.strength
        n = len(cum) - 1
        widest = (
            min(
                bisect_right(cum, cum[first] + budget),
                bisect_right(bounds, bounds[first] + self.max_chars),
            )
            - 1
        )
        if widest <= pos:
            return None
        if pos == 0 and widest >= n:
            # The whole text fits: headings choose where to cut a text that must be cut, they do not
            # split one that fits (a 32k-token document under max_tokens=32768 is one input).
            return n
        room = cum[first] + budget - cum[pos]
        earliest = max(pos + 1, bisect_left(cum, cum[pos] + max(1, room // 4)))
        last_candidate = min(widest, n - 1)
        if earliest <= last_candidate:
            try:
                return strength.index(_HEADING, earliest, last_candidate + 1)
            except ValueError:
                pass
        if widest >= n:
            return n
        candidates = strength[earliest : widest + 1]
        if not candidates:
            return widest
        best = max(candidates)
        if best == _HARD:
            return widest
        return earliest + len(candidates) - 1 - candidates[::-1].index(best)

    def _overlap_start(self, units: _Units, pos: int, end: int) -> int:
        """First unit of the next chunk: up to ``overlap_tokens`` tokens back from ``end``.

        A chunk that starts a section gets no overlap: the end of the previous section is not
        its context.
        """
        cum, strength = units.cum, units.strength
        if not self.overlap_tokens or end == len(strength) or strength[end] == _HEADING:
            return end
        start = max(pos, bisect_left(cum, cum[end] - self.overlap_tokens))
        for k in range(start, end):
            if strength[k] >= _SPACE:
                return k
        return start
