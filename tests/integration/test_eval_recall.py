"""eval-recall end to end on a small corpus: real Ray pool (MiniLM), Milvus Lite, table, JSON and plot.

The corpus is the repository's own pipeline/tools/sample_corpus (always present, no download); the measured
table in tests/perf/results/recall/ comes from Debian's manual pages by the command in the README.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.search.routing import Profile, Strategy, choose
from pipeline.settings import Settings
from pipeline.tools.eval_recall import EvalOptions, run_eval
from workers.pool import EmbedderPool

pytestmark = pytest.mark.slow

CORPUS = Path(__file__).parents[2] / "pipeline" / "tools" / "sample_corpus"


async def test_eval_recall_measures_every_strategy(
    ray_session: None, milvus_lite_uri: str, minilm_path: Path, tmp_path: Path
) -> None:
    settings = Settings.model_validate(
        {
            "model": {"name_or_path": str(minilm_path)},
            "replicas": {"dims": [128, 32]},
            "milvus": {"uri": milvus_lite_uri},
            "pool": {"num_actors": 1, "cpus_per_actor": 1},
        }
    )
    pool = await EmbedderPool.start(
        settings.model, settings.batching, settings.pool, namespace=f"eval-{uuid.uuid4().hex[:8]}"
    )
    dims = settings.replicas.replica_dims(pool.info.native_dim)
    options = EvalOptions(
        out_dir=tmp_path,
        text_dir=CORPUS,
        max_docs=10,
        title_queries=10,
        factors=(2, 50),
        top_k=5,
        collection_prefix=f"eval_{uuid.uuid4().hex[:8]}",
    )
    try:
        report = await run_eval(settings, pool, dims, options)
        # Measuring again on the stored index (no re-embedding) reads the same chunks and vectors.
        again = await run_eval(
            settings,
            pool,
            dims,
            replace(options, out_dir=tmp_path / "again", factors=(50,), reuse_index=True),
        )
    finally:
        pool.shutdown()
    assert report.documents == 10 and report.queries > 50 and report.chunks <= 5 * 50
    rows = {(r["dim"], r["funnel_factor"]): r for r in report.rows}
    assert set(rows) == {(384, None), (128, None), (32, None), (128, 2), (128, 50), (32, 2), (32, 50)}
    # A shortlist holding every chunk makes the funnel exact: re-scoring is the exact search.
    assert rows[(32, 50)]["recall"] == rows[(128, 50)]["recall"] == 1.0
    assert rows[(384, None)]["recall"] >= 0.9
    assert rows[(32, None)]["recall"] < rows[(32, 50)]["recall"]
    assert all(r["p50_ms"] > 0 and r["p95_ms"] >= r["p50_ms"] for r in report.rows)
    # The three outputs; the JSON is a routing profile.
    table = (tmp_path / "recall.md").read_text()
    assert "| funnel 32d×50 | 32d | 1.000 |" in table
    assert (tmp_path / "recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "recall.json").read_text())["chunks"] == report.chunks
    profile = Profile.load(tmp_path / "recall.json", (384, 128, 32))
    assert choose(profile, recall_target=1.0).strategy.dim in (384, 128, 32)
    assert Strategy(32, 50) in profile.entries
    assert again.chunks == report.chunks
    assert [r["recall"] for r in again.rows if r["funnel_factor"] != 2] == [
        r["recall"] for r in report.rows if r["funnel_factor"] != 2
    ]
