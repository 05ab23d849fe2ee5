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


def test_a_model_folder_of_fewer_positions_runs_at_its_own_context(tmp_path: Path, minilm_path: Path) -> None:
    # all-MiniLM-L6-v2 has 512 positions: the bench once asked every folder for Qwen3's 32,768 and
    # stopped at a configuration error; the long document is cut to the context instead.
    out = tmp_path / "minilm.json"
    args = ["--real-text", str(write_corpus(tmp_path)), "--model", str(minilm_path), "--max-tokens", "64"]
    args += ["--strategies", "ours", "--warmup-chunks", "4", "--device", "cpu", "--out", str(out)]
    assert bench_realtext.main(args) == 0
    result = json.loads(out.read_text())
    assert result["what"].startswith(f"the model folder {minilm_path}")
    long_document = result["long_document"]
    assert long_document["text_tokens"] <= 510 and long_document["chunks_at_full_context"] == 1
    assert result["strategies"]["ours"]["tokens_per_s"] > 0
