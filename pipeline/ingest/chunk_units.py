"""A document as units, the atoms of chunking, and how good a chunk boundary is before each.

:mod:`pipeline.ingest.chunking` chooses chunk boundaries on these.  A unit is one token, or tokens
that share characters, or a ``max_chars`` slice of a longer one.  All work per token is done in C
(list operations, ``map`` over ``operator`` functions, regular expressions over the text); Python
runs per unit group or per boundary found by a regular expression, never per token, so a long
document costs little beyond its tokenization.
"""

from __future__ import annotations

import operator
import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from itertools import accumulate, compress

# Boundary strengths: how good a place to end a chunk is, weakest first.
HARD, SPACE, SENTENCE, LINE, PARAGRAPH, HEADING = range(6)

_HEADING_LINE = re.compile(r"^ {0,3}#{1,6}(?:[ \t]|$)", re.MULTILINE)
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})", re.MULTILINE)
_LINE_BREAKS = re.compile(r"\n\s*")
# A full stop before whitespace (after up to two closing quotes or brackets), or a CJK one,
# which needs no space after it.
_SENTENCE_END = re.compile(r"[.!?…][\"')\]}»”’」』]{0,2}(?=\s)|[。！？]")


@dataclass(slots=True)
class TokenUnits:
    """The document as a sequence of units.

    Unit ``k`` owns the characters ``bounds[k]:bounds[k + 1]`` (its tokens and the gap after
    them), holds ``cum[k + 1] - cum[k]`` tokens, and ``strength[k]`` rates a chunk boundary
    just before it.  Read-only once built: one instance may serve several cuts of one text.
    """

    bounds: list[int]
    cum: list[int]
    strength: list[int]


def token_units(text: str, spans: list[tuple[int, int]], max_chars: int) -> TokenUnits:
    """The units of ``text`` given its token ``spans`` (at least one)."""
    starts, ends, counts = _group(spans)
    strength = _strengths(text, starts, ends)
    bounds = [0, *starts[1:], len(text)]
    if max(map(operator.sub, bounds[1:], bounds)) > max_chars:
        bounds, counts, strength = _split_long_units(bounds, counts, strength, max_chars)
    return TokenUnits(bounds, [0, *accumulate(counts)], strength)


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
    fall between those.  Spans as :class:`~workers.model.tokenizer.TextTokenizer` gives them
    (non-empty, starts and ends non-decreasing) are grouped in C; others token by token.
    """
    starts = list(map(operator.itemgetter(0), spans))
    ends = list(map(operator.itemgetter(1), spans))
    if not any(map(operator.lt, starts[1:], ends)) and not any(map(operator.le, starts[1:], starts)):
        return starts, ends, [1] * len(starts)
    if _monotone(starts, ends):
        # Then a token shares characters with its unit exactly when it starts before the previous
        # token ends (the loop below, on such spans), so units start where that is not the case.
        firsts = [0, *compress(range(1, len(starts)), map(operator.ge, starts[1:], ends))]
        lasts = [first - 1 for first in firsts[1:]] + [len(starts) - 1]
        counts = list(map(operator.sub, [*firsts[1:], len(starts)], firsts))
        return list(map(starts.__getitem__, firsts)), list(map(ends.__getitem__, lasts)), counts
    starts, ends = [], []
    counts = []
    for start, end in spans:
        if starts and (start < ends[-1] or start <= starts[-1]):
            counts[-1] += 1
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
            counts.append(1)
    return starts, ends, counts


def _monotone(starts: list[int], ends: list[int]) -> bool:
    """Every span non-empty, starts and ends non-decreasing (checked in C)."""
    return (
        all(map(operator.lt, starts, ends))
        and not any(map(operator.gt, starts, starts[1:]))
        and not any(map(operator.gt, ends, ends[1:]))
    )


def _strengths(text: str, starts: list[int], ends: list[int]) -> list[int]:
    """``strength[k]`` rates a chunk boundary just before unit ``k``.

    Touching tokens are a hard cut and a gap is whitespace; the few stronger boundaries are
    found by scanning the text, so the work per token stays in C.
    """
    n = len(starts)
    strength: list[int] = [HARD, *map(operator.gt, starts[1:], ends)]

    def raise_before(offset: int, level: int) -> None:
        # The boundary belongs before the first unit starting at or after `offset`.
        k = bisect_left(starts, offset)
        if 0 < k < n and strength[k] < level:
            strength[k] = level

    for match in _SENTENCE_END.finditer(text):
        raise_before(match.end(), SENTENCE)
    for match in _LINE_BREAKS.finditer(text):
        raise_before(match.end(), PARAGRAPH if match.group().count("\n") > 1 else LINE)
    fences = _fences(text)
    for match in _HEADING_LINE.finditer(text):
        if bisect_right(fences, match.start()) % 2 == 0:  # not a comment inside a code block
            raise_before(match.start(), HEADING)
    return strength


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
            new_strength.append(HARD)
        new_bounds.append(end)
    return new_bounds, new_counts, new_strength


def cut(units: TokenUnits, first: int, pos: int, budget: int, max_chars: int) -> int | None:
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
            bisect_right(bounds, bounds[first] + max_chars),
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
            return strength.index(HEADING, earliest, last_candidate + 1)
        except ValueError:
            pass
    if widest >= n:
        return n
    candidates = strength[earliest : widest + 1]
    if not candidates:
        return widest
    best = max(candidates)
    if best == HARD:
        return widest
    return earliest + len(candidates) - 1 - candidates[::-1].index(best)


def overlap_start(units: TokenUnits, pos: int, end: int, overlap_tokens: int) -> int:
    """First unit of the next chunk: up to ``overlap_tokens`` tokens back from ``end``.

    A chunk that starts a section gets no overlap: the end of the previous section is not
    its context.
    """
    cum, strength = units.cum, units.strength
    if not overlap_tokens or end == len(strength) or strength[end] == HEADING:
        return end
    start = max(pos, bisect_left(cum, cum[end] - overlap_tokens))
    for k in range(start, end):
        if strength[k] >= SPACE:
            return k
    return start
