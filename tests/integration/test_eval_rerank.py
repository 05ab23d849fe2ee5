"""eval-recall with a reranker configured: the report and its table carry the latency the reranker adds
(real Ray embedder and reranker actors, Milvus Lite, the repository's sample corpus)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from pipeline.settings import Settings
from pipeline.tools.eval_recall import EvalOptions, run_eval
from workers.pool import EmbedderPool
from workers.reranker_pool import RerankerPool

pytestmark = pytest.mark.slow

CORPUS = Path(__file__).parents[2] / "pipeline" / "tools" / "sample_corpus"


async def test_eval_recall_reports_the_latency_the_reranker_adds(
    ray_session: None, milvus_lite_uri: str, minilm_path: Path, tiny_cross_encoder_path: Path, tmp_path: Path
) -> None:
    settings = Settings.model_validate(
        {
            "model": {"name_or_path": str(minilm_path)},
            "replicas": {"dims": [32]},
            "milvus": {"uri": milvus_lite_uri},
            "pool": {"num_actors": 1, "cpus_per_actor": 1},
            # The tiny cross-encoder takes 128 tokens, MiniLM's chunks up to 256: cut, as TEI would.
            "reranker": {
                "name_or_path": str(tiny_cross_encoder_path),
                "cpus_per_actor": 0.5,
                "truncate_documents": True,
            },
        }
    )
    assert settings.reranker is not None
    queries = tmp_path / "queries.txt"
    queries.write_text("how do volcanoes form\nroast coffee at home\nwhat keeps a bicycle chain quiet\n")
    namespace = f"eval-rerank-{uuid.uuid4().hex[:8]}"
    pool = await EmbedderPool.start(settings.model, settings.batching, settings.pool, namespace=namespace)
    reranker = await RerankerPool.start(settings.reranker, namespace=namespace)
    options = EvalOptions(
        out_dir=tmp_path / "out",
        text_dir=CORPUS,
        max_docs=6,
        queries_file=queries,
        title_queries=0,
        factors=(2,),
        top_k=3,
        collection_prefix=f"evalrr_{uuid.uuid4().hex[:8]}",
        rerank=8,
    )
    try:
        dims = settings.replicas.replica_dims(pool.info.native_dim)
        report = await run_eval(settings, pool, dims, options, reranker)
    finally:
        reranker.shutdown()
        pool.shutdown()
    rerank = report.meta["rerank"]
    assert (rerank["queries"], rerank["candidates"]) == (3, 8)
    assert rerank["pairs"] == 3 * min(8, report.chunks)
    assert 0 < rerank["p50_ms"] <= rerank["p95_ms"] and rerank["mean_ms"] > 0
    assert rerank["model"] == str(tiny_cross_encoder_path)
    assert json.loads((tmp_path / "out" / "recall.json").read_text())["meta"]["rerank"] == rerank
    table = (tmp_path / "out" / "recall.md").read_text()
    assert f"reranker {tiny_cross_encoder_path} adds p50 {rerank['p50_ms']:.1f} ms" in table
