"""`bench --real-text` on CPU (tiny random layers behind the real Qwen3 tokenizer): strategies taking
turns over several rounds, ours against itself with one batch in flight, and a bad strategy refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.small_corpus import write_corpus

from pipeline.tools import bench_realtext


def test_strategies_take_turns_and_each_reports_its_fastest_round(tmp_path: Path) -> None:
    out = tmp_path / "realtext.json"
    args = ["--real-text", str(write_corpus(tmp_path)), "--random", "tiny-real", "--max-tokens", "64"]
    names = "ours,ours_one_batch_in_flight,ours_unfused"
    args += ["--strategies", names, "--rounds", "3", "--long-doc-tokens", "0"]
    assert bench_realtext.main([*args, "--warmup-chunks", "4", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    strategies = result["strategies"]
    assert set(strategies) == set(names.split(",")) and result["model"]["fused_projections"]
    for figures in strategies.values():
        assert len(figures["rounds_tokens_per_s"]) == 3
        assert figures["tokens_per_s"] == max(figures["rounds_tokens_per_s"])
        # The same float32 weights on the CPU, fused or not: every checked vector matches the reference
        # (a plain forward of the unfused network).
        assert figures["accuracy"]["checked"] > 0 and figures["accuracy"]["min_cosine"] > 0.9999
    ours = strategies["ours"]
    for peer in ("ours_one_batch_in_flight", "ours_unfused"):
        assert ours[f"ratio_vs_{peer}"] == ours["tokens_per_s"] / strategies[peer]["tokens_per_s"]
    assert result["chunks"] > 4 and result["per_language_ours"].keys() == {"en", "de", "zh", "ja"}


def test_an_unknown_strategy_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["--real-text", str(tmp_path / "never-read.jsonl"), "--random", "tiny-real"]
    with pytest.raises(SystemExit) as exited:
        bench_realtext.main([*args, "--strategies", "ours,sentence-transformers"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "unknown sentence-transformers" in err and "ours_one_batch_in_flight" in err
