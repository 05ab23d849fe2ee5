"""`bench --rerank` on the CPU with the tiny reranker shape: both ways score every pair, the scores agree,
the JSON names what was measured."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.cli import main


def test_bench_rerank_measures_ours_and_the_plain_forward_and_checks_their_scores(tmp_path: Path) -> None:
    out = tmp_path / "rerank.json"
    argv = ["bench", "--rerank", "--random", "tiny-reranker", "--queries", "3", "--docs-per-query", "8"]
    assert main([*argv, "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert (result["pairs"], result["queries"]) == (24, 3)
    assert result["scores_agree"] and result["max_abs_score_difference"] <= result["tolerance"] == 1e-4
    assert result["score_spread"] > 10 * result["max_abs_score_difference"]
    for way in ("ours", "plain"):
        assert result[way]["pairs_per_s"] > 0 and result[way]["tokens_per_s"] > 0
    assert result["model"]["name"] == "random tiny-reranker" and result["model"]["kind"] == "qwen3"
    assert result["command"].startswith("python -m pipeline bench --rerank")
