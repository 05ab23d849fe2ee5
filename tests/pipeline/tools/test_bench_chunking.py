"""`bench --chunking`: the chunking stage alone on a real-text file, at each thread count asked."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.cli import main
from pipeline.ingest.chunking import Chunker
from pipeline.tools.bench_chunking import units_of
from workers.bench.qwen3_tokenizer import EOS_ID, embedding_tokenizer
from workers.model.tokenizer import TextTokenizer

TEXTS = [
    "# 向量检索\n\n向量检索把文本变成高维向量。相似的文本彼此靠近！" * 30,
    "## Usage\n\nThe chunker cuts at headings, then paragraphs. " * 60,
    "kurz",
]


def test_times_each_thread_count_on_the_same_chunks(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(
        "".join(json.dumps({"id": str(i), "lang": "x", "text": t}) + "\n" for i, t in enumerate(TEXTS))
    )
    out = tmp_path / "result.json"
    argv = ["bench", "--chunking", "--real-text", str(corpus), "--threads", "1,2", "--max-tokens", "64"]
    assert main([*argv, "--unit-docs", "1", "--repeat", "2", "--label", "test", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    tokenizer = TextTokenizer(embedding_tokenizer(), max_length=32768, pad_token_id=EOS_ID)
    expected = sum(len(Chunker(tokenizer, 64).split(text)) for text in TEXTS)
    assert result["tokens"] == sum(tokenizer.count_tokens(text) for text in TEXTS)
    assert [run["threads"] for run in result["runs"]] == [1, 2]
    for run in result["runs"]:
        assert run["chunks"] == expected and len(run["seconds"]) == 2
        assert run["tokens_per_s_best"] == result["tokens"] / min(run["seconds"])
    assert result["command"].startswith("python -m pipeline bench --chunking") and result["label"] == "test"


def test_units_are_upsert_events_in_offset_order() -> None:
    units = units_of(["a", "b", "c"], 2)
    assert [[r.offset for r in unit] for unit in units] == [[0, 1], [2]]
    assert json.loads(units[1][0].value or b"") == {"op": "upsert", "id": "doc-2", "text": "c"}
