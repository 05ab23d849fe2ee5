"""Corpus readers of eval-recall: the roff converter on a page written here, and the folder readers."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from pipeline.tools.eval_corpus import man_pages, roff_to_text, text_files

# A manual page in the man macros, written for this test (no real page copied).
PAGE = r""".\" comment: not text
.TH FROB 1 "2026" "embedstream" "User Commands"
.SH NAME
frob \- turn widgets into \fBgadgets\fR
.SH SYNOPSIS
.B frob
[\fB\-n\fR \fIcount\fR]
.I file
.SH DESCRIPTION
.PP
\fBfrob\fP reads \fIfile\fP and writes one gadget per widget\(emquickly.
It never touches the \*(lqoriginal\*(rq.
.TP
.BR \-n ", " \-\-count
Stop after \fIcount\fR widgets.
.SS "Exit status"
Zero on success\e nothing else.
"""


def test_roff_to_text_keeps_words_headings_and_paragraphs() -> None:
    text = roff_to_text(PAGE)
    assert text.splitlines()[0] == "NAME"
    assert "frob - turn widgets into gadgets" in text
    assert "frob reads file and writes one gadget per widget—quickly." in text
    assert "-n , --count" in text and "Stop after count widgets." in text
    assert "EXIT STATUS" in text and "Zero on success\\ nothing else." in text
    for layout in ("comment", ".TH", "\\f", "\\*", ".PP"):
        assert layout not in text


def test_man_pages_reads_gzipped_sections_skips_redirects_and_stubs(tmp_path: Path) -> None:
    (tmp_path / "man1").mkdir()
    (tmp_path / "man1" / "frob.1.gz").write_bytes(gzip.compress(PAGE.encode()))
    (tmp_path / "man1" / "unfrob.1.gz").write_bytes(gzip.compress(b".so man1/frob.1\n"))
    (tmp_path / "man1" / "stub.1").write_text(".SH NAME\nstub \\- nothing\n")
    [page] = man_pages(tmp_path, sections="18")
    assert page.doc_id == "man1/frob.1.gz" and page.title == "frob - turn widgets into gadgets"
    with pytest.raises(FileNotFoundError, match="no manual pages"):
        man_pages(tmp_path, sections="5")


def test_text_files_reads_utf8_files_and_skips_short_or_binary_ones(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("First line\n" + "words " * 50)
    (tmp_path / "short.txt").write_text("tiny")
    (tmp_path / "blob.bin").write_bytes(b"\xff\xfe" * 200)
    [doc] = text_files(tmp_path)
    assert doc.doc_id == "a.txt" and doc.title == "First line"
