"""`bench --real-text --dtype fp8`: bf16 against FP8 on the same weights (CPU: torch's CPU _scaled_mm
behind --fp8-on-cpu, else the refusal), and the query and agreement figures it reports."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.small_corpus import DOCUMENTS, write_corpus

from pipeline.tools import bench_realtext
from workers.bench.fp8_bench import corpus_queries, neighbour_agreement


def _fp8_on_cpu(tmp_path: Path) -> list[str]:
    """The arguments of an FP8 run on the CPU over the small corpus (written into ``tmp_path``)."""
    return [
        "--real-text",
        str(write_corpus(tmp_path)),
        "--random",
        "tiny-real",
        "--dtype",
        "fp8",
        "--fp8-on-cpu",
    ]


def test_queries_are_each_documents_first_real_line() -> None:
    documents = [{"text": text} for _, text in DOCUMENTS]
    assert corpus_queries(documents) == [
        "pkeys - overview of Memory Protection Keys",
        "split - eine Datei in Teile aufteilen",
        "向量检索把文本变成高维向量的工具",
        "埋め込みモデルは文章をベクトルに変換します",
    ]
    assert corpus_queries(documents, count=2) == [
        "pkeys - overview of Memory Protection Keys",
        "埋め込みモデルは文章をベクトルに変換します",
    ]
    assert corpus_queries([{"text": "x" * 500}]) == ["x" * 200]


def test_neighbour_agreement_counts_shared_top_k() -> None:
    corpus = np.eye(12, dtype=np.float32)
    query = np.linspace(1.0, 0.1, 12, dtype=np.float32)[None, :]  # ranks rows 0, 1, ..., 11
    reversed_tail = query.copy()
    reversed_tail[0, 9:] = [0.05, 0.04, 2.0]  # row 11 first, rows 9 and 10 fall out of the top 10
    same = neighbour_agreement({"bf16": query, "fp8": query}, {"bf16": corpus, "fp8": corpus})
    assert (same["mean_overlap"], same["top1_agreement"], same["passed"]) == (1.0, 1.0, True)
    moved = neighbour_agreement({"bf16": query, "fp8": reversed_tail}, {"bf16": corpus, "fp8": corpus})
    assert moved["mean_overlap"] == pytest.approx(0.9) and moved["top1_agreement"] == 0.0
    assert moved["passed"] is False and moved["k"] == 10


def test_fp8_run_on_cpu_reports_speed_cosines_and_neighbours(tmp_path: Path) -> None:
    out = tmp_path / "fp8.json"
    args = _fp8_on_cpu(tmp_path)
    args += ["--long-doc-tokens", "0", "--warmup-chunks", "2", "--accuracy-sample", "8", "--fp8-sweep", "0,1"]
    assert bench_realtext.main([*args, "--max-tokens", "64", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["fp8_layers"] == {
        "quantized": 8,
        "kept": [],
        "bf16_blocks": 0,
        "fast_accumulation": True,
    }  # 2 blocks x 4 linears (qkv, o, gate_up, down: the projections are fused)
    bf16, fp8 = result["strategies"]["ours_bf16"], result["strategies"]["ours_fp8"]
    assert bf16["tokens_per_s"] > 0 and fp8["speedup_vs_bf16"] == fp8["tokens_per_s"] / bf16["tokens_per_s"]
    cosine = result["cosine_fp8_vs_bf16"]
    assert cosine["vectors"] == result["chunks"] > len(DOCUMENTS)  # every chunk, not a sample
    assert 0.95 < cosine["min"] <= cosine["p1"] <= cosine["mean"] < 1.0  # close, and not the same vectors
    neighbours = result["neighbours_fp8_vs_bf16"]
    assert (neighbours["queries"], neighbours["k"]) == (len(DOCUMENTS), 10)
    assert 0.0 < neighbours["mean_overlap"] <= 1.0
    sweep = result["fp8_bf16_blocks_sweep"]
    assert sweep[0]["what"] == "bf16 vs float32" and sweep[0]["vectors"] == 8
    fp8_rows = [(row["bf16_blocks"], row["fast_accumulation"], row["fp8_linears"]) for row in sweep[1:]]
    assert fp8_rows == [(0, True, 8), (1, True, 4), (0, False, 8)]
    assert all(row["vectors"] == 8 and row["min"] > 0.95 for row in sweep)


def test_a_failed_timed_comparison_keeps_the_sweep_and_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers.bench import fp8_bench

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("inductor failed on _scaled_mm")

    monkeypatch.setattr(fp8_bench, "compare", broken)
    out = tmp_path / "fp8.json"
    args = _fp8_on_cpu(tmp_path)
    args += ["--long-doc-tokens", "0", "--accuracy-sample", "4", "--fp8-sweep", "0", "--limit-docs", "1"]
    assert bench_realtext.main([*args, "--out", str(out)]) == 1
    result = json.loads(out.read_text())
    assert result["error"] == "RuntimeError: inductor failed on _scaled_mm"
    assert [row["bf16_blocks"] for row in result["fp8_bf16_blocks_sweep"]] == [None, 0, 0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_fp8_run_is_refused_without_an_fp8_gpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--real-text", str(tmp_path / "never-read.jsonl"), "--random", "tiny-real", "--dtype", "fp8"]
    assert bench_realtext.main(args) == 2
    assert "compute capability 8.9 or newer" in capsys.readouterr().err
