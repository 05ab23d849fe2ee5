"""Real text corpora for eval-recall: Debian manual pages (roff) or a folder of plain text files.

Manual pages are read where Debian installs them (``/usr/share/man/man1/ls.1.gz``; translations under
``/usr/share/man/{lang}/``, from packages such as manpages-fr, manpages-de, manpages-zh) and turned into
plain text by :func:`roff_to_text`, a small converter for the man and mdoc macros: it keeps the words,
headings and paragraph breaks an embedding needs and drops the formatting.  It is no typesetter (tables
come out as their cell text), which is what an embedding model wants anyway.
"""

from __future__ import annotations

import gzip
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

_MIN_CHARS = 200  # pages shorter than this are stubs ("see also"), not documents
_TEXT_MACROS = frozenset(
    [
        "B",
        "I",
        "BR",
        "RB",
        "IR",
        "RI",
        "BI",
        "IB",
        "SM",
        "SB",
        "Nm",
        "Nd",
        "Fl",
        "Ar",
        "Op",
        "Cm",
        "Pa",
        "Xr",
        "Va",
        "Fn",
        "Ft",
        "Fa",
        "Dv",
        "Er",
        "Ev",
        "Li",
        "Sy",
        "Em",
        "Dq",
        "Sq",
        "Ql",
        "Tn",
    ]
)
_BREAK_MACROS = frozenset(
    ["PP", "P", "LP", "TP", "IP", "HP", "sp", "br", "Sp", "Pp", "Bl", "El", "It", "Bd", "Ed", "RS", "RE"]
)
_HEADING_MACROS = frozenset({"SH", "SS", "Sh", "Ss"})
_NAMED_CHARS = {
    "aq": "'", "dq": '"', "em": "—", "en": "–", "bu": "•", "co": "©", "lq": "“", "rq": "”",
    "oq": "‘", "cq": "’", "hy": "-", "mi": "-", "ti": "~", "ha": "^", "rs": "\\", "ga": "`", "at": "@",
}  # fmt: skip
_ESCAPES = re.compile(
    r"\\(?:f(?:\[[^\]]*\]|\(..|.)"  # font changes
    r"|s[+-]?\d"  # size changes
    r"|\*(?:\[[^\]]*\]|\(..|.)"  # strings
    r"|\((..)"  # named characters \(xx
    r"|\[([^\]]*)\]"  # named characters \[xx]
    r"|(.))"  # any other one-character escape
)


@dataclass(frozen=True)
class Document:
    """One corpus document: an id (its path relative to the corpus root), its text, its title line."""

    doc_id: str
    text: str
    title: str


def _unquote(args: str) -> str:
    return " ".join(part.strip('"') for part in re.findall(r'"[^"]*"|\S+', args))


def _escape(match: re.Match[str]) -> str:
    named = match.group(1) or match.group(2)
    if named is not None:
        return _NAMED_CHARS.get(named, "")
    other = match.group(3)
    if other is None:  # font, size or string: formatting only
        return ""
    return {"-": "-", "e": "\\", " ": " ", "~": " ", "0": " "}.get(other, "")


def roff_to_text(source: str) -> str:
    """The readable text of a man (or mdoc) page: headings on their own lines, paragraphs apart."""
    out: list[str] = []
    for line in source.splitlines():
        if line.startswith(('.\\"', "'\\\"", '.\\"')) or line.strip() in {".", "'"}:
            continue  # comment or empty request
        if line.startswith((".", "'")):
            macro, _, args = line[1:].strip().partition(" ")
            if macro in _HEADING_MACROS:
                out += ["", _unquote(args).upper(), ""]
            elif macro in _TEXT_MACROS:
                out.append(_unquote(args))
            elif macro in _BREAK_MACROS:
                out.append("")
                if macro in {"IP", "It"} and args:
                    out.append(_unquote(args))
            continue  # every other request (.TH, .de, .nf, .if ...) is layout
        out.append(line)
    text = _ESCAPES.sub(_escape, "\n".join(out))
    text = re.sub(r"[ \t]+", " ", text)
    return re.sub(r"\n\s*\n+", "\n\n", text).strip()


def _title(text: str) -> str:
    """The NAME section's line ("ls - list directory contents"), else the first line."""
    match = re.search(r"^NAME\s*\n+(.+)", text, re.MULTILINE)
    return (match.group(1) if match else text.splitlines()[0]).strip()


def man_pages(
    root: Path, sections: str = "158", max_pages: int | None = None, seed: int = 0, lang: str | None = None
) -> list[Document]:
    """Manual pages under ``root`` (``/usr/share/man``; ``lang`` picks a translation folder such as
    "fr"), of the given sections, a seeded random sample of ``max_pages`` (all when None)."""
    base = root / lang if lang else root
    paths = sorted(p for s in sections for p in (base / f"man{s}").glob("*") if p.is_file())
    if not paths:
        raise FileNotFoundError(
            f"no manual pages in {base}/man[{sections}] (install manpages, or pass --text-dir)"
        )
    random.Random(seed).shuffle(paths)
    documents: list[Document] = []
    for path in paths:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        source = raw.decode("utf-8", errors="replace")
        if source.lstrip().startswith(".so "):
            continue  # a redirect to another page
        text = roff_to_text(source)
        if len(text) >= _MIN_CHARS:
            documents.append(Document(str(path.relative_to(root)), text, _title(text)))
        if max_pages is not None and len(documents) >= max_pages:
            break
    return documents


def text_files(root: Path, max_files: int | None = None) -> list[Document]:
    """Every readable UTF-8 text file under ``root`` (sorted), at most ``max_files``."""

    def walk() -> Iterator[Document]:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            try:
                text = path.read_text(encoding="utf-8").strip()
            except (UnicodeDecodeError, OSError):
                continue
            if len(text) >= _MIN_CHARS:
                yield Document(str(path.relative_to(root)), text, text.splitlines()[0].strip())

    documents = list(walk())[:max_files]
    if not documents:
        raise FileNotFoundError(f"no text files of at least {_MIN_CHARS} characters under {root}")
    return documents
