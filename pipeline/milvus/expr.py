"""Milvus boolean-expression literals for arbitrary strings.

Server-side expression templates (``filter_params``) are understood neither by Milvus
2.3 nor by milvus-lite 3.2, so values are spliced into the expression text as quoted
literals.  :func:`quote` uses only the escapes that both grammars share:

* Milvus 2.3 (ANTLR ``Plan.g4``, then Go ``strconv.Unquote``): a double-quoted literal
  may hold any character except a raw ``"``, ``\\``, CR or LF; ``\\'`` is an error there.
* milvus-lite: the same four characters need escaping; unknown escapes are errors.

Every other character (NUL and other control characters, ``'``, ``#``, any Unicode)
is passed through verbatim, which both servers decode unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r"})


def quote(value: str) -> str:
    """A double-quoted string literal that Milvus decodes back to exactly ``value``."""
    return '"' + value.translate(_ESCAPES) + '"'


def in_lists(field: str, values: Iterable[str], max_values: int, max_chars: int) -> Iterator[str]:
    """``field in ["a", ...]`` expressions covering ``values``, each with at most ``max_values``
    values and literals of at most about ``max_chars`` (a single longer literal gets its own)."""
    literals: list[str] = []
    size = 0
    for literal in map(quote, values):
        if literals and (len(literals) >= max_values or size + len(literal) + 2 > max_chars):
            yield f"{field} in [{', '.join(literals)}]"
            literals, size = [], 0
        literals.append(literal)
        size += len(literal) + 2
    if literals:
        yield f"{field} in [{', '.join(literals)}]"


def any_of(terms: Iterable[str], max_chars: int) -> Iterator[str]:
    """``(t1) or (t2) ...`` expressions covering ``terms``, each at most about ``max_chars``
    long (a single longer term gets its own)."""
    batch: list[str] = []
    size = 0
    for term in terms:
        if batch and size + len(term) + 6 > max_chars:
            yield " or ".join(batch)
            batch, size = [], 0
        batch.append(f"({term})")
        size += len(term) + 6
    if batch:
        yield " or ".join(batch)
