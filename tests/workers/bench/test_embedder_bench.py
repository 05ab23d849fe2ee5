"""`python -m pipeline bench` on the CPU: the tiny random model, a small workload, the JSON it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.cli import main as cli_main
from workers.bench.setup import Affixes, as_text, id_tokenizer, lognormal_lengths, make_documents


def test_workload_lengths_are_lognormal_clipped_and_fixed_by_the_seed() -> None:
    lengths = lognormal_lengths(4000, seed=0)
    assert lengths.min() >= 8 and lengths.max() <= 2048
    assert 270 <= np.median(lengths) <= 330
    assert (lengths == lognormal_lengths(4000, seed=0)).all()


def test_documents_end_with_the_eos_and_round_trip_through_the_id_tokenizer() -> None:
    affixes = Affixes(prefix=(), suffix=(511,), pad=511)
    documents = make_documents(np.array([8, 30, 2]), 512, affixes, seed=0)
    assert [len(document) for document in documents] == [8, 30, 2]
    tokenizer = id_tokenizer(512, affixes)
    for document in documents:
        assert document[-1] == 511 and 511 not in document[:-1]
        assert tokenizer.encode(as_text(document, affixes)).ids == document


def test_bench_runs_on_cpu_and_writes_its_result(tmp_path: Path) -> None:
    out = tmp_path / "tiny.json"
    argv = ["bench", "--random", "tiny", "--docs", "12", "--warmup-docs", "4", "--out", str(out)]
    assert cli_main(argv) == 0
    result = json.loads(out.read_text())
    assert result["command"].startswith("python -m pipeline bench --random tiny")
    assert {"device", "torch", "transformers", "sentence_transformers", "matmul_peak_tflops"} <= set(result)
    assert result["model"]["non_embedding_params"] > 0 and result["accuracy_passed"] is True
    assert set(result["workloads"]) == {"mixed", "fixed512"}
    for workload in result["workloads"].values():
        assert workload["docs"] == 12
        assert set(workload["strategies"]) == {"ours", "sentence_transformers", "hf_arrival"}
        for figures in workload["strategies"].values():
            assert figures["tokens_per_s"] > 0 and figures["docs_per_s"] > 0 and figures["peak_fraction"] > 0
            assert figures["accuracy"] == {
                "checked": 12,
                "min_cosine": figures["accuracy"]["min_cosine"],
                "passed": True,
            }
            assert figures["accuracy"]["min_cosine"] >= 0.999
        assert workload["strategies"]["sentence_transformers"]["ratio_vs_sentence_transformers"] == 1.0


def test_fp32_reference_reports_how_far_each_vector_and_the_reference_are_from_float32(
    tmp_path: Path,
) -> None:
    out = tmp_path / "tiny.json"
    argv = ["bench", "--random", "tiny", "--docs", "8", "--warmup-docs", "2", "--workloads", "mixed"]
    argv += ["--strategies", "ours", "--fp32-reference", "--full-precision-reductions", "--out", str(out)]
    assert cli_main(argv) == 0
    result = json.loads(out.read_text())
    assert result["reduced_precision_reductions"] is False
    mixed = result["workloads"]["mixed"]
    accuracy = mixed["strategies"]["ours"]["accuracy"]
    # On the CPU the model already runs in float32: every figure is a cosine of (nearly) equal vectors.
    assert 0.9999 <= mixed["reference_min_cosine_vs_fp32"] <= 1.0001
    assert 0.9999 <= accuracy["min_cosine_vs_fp32"] <= 1.0001 and accuracy["checked"] == 8


def test_saved_random_model_loads_like_a_qwen3_embedding_checkpoint(tmp_path: Path) -> None:
    from workers.model.embedding_model import EmbeddingModel
    from workers.settings import ModelSettings

    folder = tmp_path / "tiny"
    assert cli_main(["bench", "--random", "tiny", "--save-model", str(folder)]) == 0
    model = EmbeddingModel.load(ModelSettings(name_or_path=str(folder)), device="cpu")
    assert model.pooling == "last_token" and model.info().native_dim == 64
    # One word is one token, and the tokenizer appends the EOS the model pools.
    assert model.tokenizer.encode(["t5 t7 t9"]) == [[5, 7, 9, 511]]
    vectors = model.embed_ids(model.tokenizer.encode(["t5 t7 t9", "t1"]), (64, 16))
    for dim, rows in vectors.items():
        assert rows.shape == (2, dim)
        assert np.allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)
