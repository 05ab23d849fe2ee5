from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.ingest.produce import count_records, iter_records


def test_jsonl_lines_go_verbatim_keyed_by_their_id(tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    events.write_bytes(
        b'{"id": "a", "text": "x"}\n\nnot json at all\n{"id": 7}\r\n{"op": "delete", "id": "b"}\n'
    )
    records = list(iter_records([events]))
    assert [(r.key, r.value) for r in records] == [
        (b"a", b'{"id": "a", "text": "x"}'),
        (None, b"not json at all"),  # the worker dead-letters it; produce does not judge
        (None, b'{"id": 7}'),
        (b"b", b'{"op": "delete", "id": "b"}'),
    ]


def test_documents_in_folders_are_upserts_keyed_by_relative_path(tmp_path: Path) -> None:
    (tmp_path / "docs" / "guide").mkdir(parents=True)
    (tmp_path / "docs" / "guide" / "intro.md").write_text("# Intro\n\nHello.", encoding="utf-8")
    (tmp_path / "docs" / "notes.txt").write_text("plain notes", encoding="utf-8")
    (tmp_path / "docs" / "image.png").write_bytes(b"\x89PNG")
    records = list(iter_records([tmp_path / "docs"]))
    assert [r.key for r in records] == [b"guide/intro.md", b"notes.txt"]
    event = json.loads(records[0].value)
    assert event == {
        "op": "upsert",
        "id": "guide/intro.md",
        "text": "# Intro\n\nHello.",
        "metadata": {"source": "guide/intro.md"},
    }
    assert count_records([tmp_path / "docs"]) == 2


def test_unknown_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list(iter_records([tmp_path / "missing.jsonl"]))
    (tmp_path / "table.csv").write_text("a,b")
    with pytest.raises(ValueError, match=r"expected a \.jsonl, \.txt or \.md file"):
        list(iter_records([tmp_path / "table.csv"]))
