"""eval-recall drops only the collections it created, on a real Milvus Lite server: a production-like
replica set under the prefix it is given survives every attempt, which fails with a clear ConfigError."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.documents import ChunkRow, UpsertDocument
from pipeline.milvus.connection import MilvusConnection
from pipeline.milvus.schema import collection_properties
from pipeline.milvus.sink import MilvusSink
from pipeline.settings import MilvusSettings, Settings
from pipeline.tools.eval_collections import MARK, claim_prefix, rebuild_replicas
from pipeline.tools.eval_recall import EvalOptions, run_eval
from workers.errors import ConfigError

CORPUS = Path(__file__).parents[3] / "pipeline" / "tools" / "sample_corpus"
DIMS = (64, 16)


class UntouchablePool:
    """Stands in for the embedder pool where eval-recall must refuse before it embeds anything."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"eval-recall used the pool ({name}) before refusing")


def milvus(uri: str, prefix: str) -> MilvusSettings:
    return MilvusSettings(uri=uri, collection_prefix=prefix, index_type="FLAT")


def write_replicas(settings: MilvusSettings, docs: int = 3) -> dict[int, list[str]]:
    """Replicas of ``DIMS`` as ``run`` makes them (through the sink), holding ``docs`` documents;
    returns each replica's pks."""
    sink = MilvusSink(settings, DIMS)
    try:
        sink.ensure_collections()
        rng = np.random.default_rng(0)
        writes = []
        for i in range(docs):
            vectors = {dim: rng.normal(size=(1, dim)).astype(np.float32) for dim in DIMS}
            vectors = {dim: v / np.linalg.norm(v, axis=1, keepdims=True) for dim, v in vectors.items()}
            writes.append(UpsertDocument(f"doc-{i}", [ChunkRow(f"doc-{i}", 0, f"text {i}", {})], vectors))
        assert not sink.write(writes).rejected
        sink.flush()
        return replica_pks(settings)
    finally:
        sink.close()


def replica_pks(settings: MilvusSettings) -> dict[int, list[str]]:
    sink = MilvusSink(settings, DIMS)
    try:
        return {dim: [row["pk"] for row in sink.fetch_all(dim)] for dim in DIMS}
    finally:
        sink.close()


def properties(settings: MilvusSettings, dim: int) -> dict[str, str]:
    connection = MilvusConnection(settings)
    try:
        return collection_properties(connection, f"{settings.collection_prefix}_{dim}")
    finally:
        connection.close()


@pytest.fixture
def production(milvus_lite_uri: str) -> MilvusSettings:
    """A production-like replica set: what ``run`` wrote under a prefix of this test's own."""
    settings = milvus(milvus_lite_uri, f"prod_{uuid.uuid4().hex[:8]}")
    assert all(len(pks) == 3 for pks in write_replicas(settings).values())
    return settings


@pytest.mark.parametrize("reuse_index", [False, True])
async def test_eval_recall_refuses_the_configured_prefix(
    production: MilvusSettings, tmp_path: Path, reuse_index: bool
) -> None:
    before = replica_pks(production)
    settings = Settings(milvus=production)  # --prefix equal to milvus.collection_prefix
    options = EvalOptions(
        out_dir=tmp_path,
        text_dir=CORPUS,
        collection_prefix=production.collection_prefix,
        reuse_index=reuse_index,
    )
    with pytest.raises(ConfigError, match=r"it is milvus.collection_prefix.*Give it a prefix of its own"):
        await run_eval(settings, UntouchablePool(), DIMS, options)
    assert replica_pks(production) == before


@pytest.mark.parametrize("reuse_index", [False, True])
async def test_eval_recall_refuses_a_prefix_holding_collections_it_did_not_create(
    production: MilvusSettings, tmp_path: Path, reuse_index: bool
) -> None:
    before = replica_pks(production)
    # Configured for another deployment: the prefix is not milvus.collection_prefix, yet not eval-recall's.
    settings = Settings(milvus=production.model_copy(update={"collection_prefix": "documents"}))
    options = EvalOptions(
        out_dir=tmp_path,
        text_dir=CORPUS,
        collection_prefix=production.collection_prefix,
        reuse_index=reuse_index,
    )
    with pytest.raises(ConfigError, match="not created by eval-recall") as refused:
        await run_eval(settings, UntouchablePool(), DIMS, options)
    prefix = production.collection_prefix
    assert f"would drop them: {prefix}_16, {prefix}_64." in str(refused.value)
    assert "Give it another --prefix" in str(refused.value)
    assert replica_pks(production) == before


def test_the_cli_refuses_prefix_documents_before_starting_a_pool(
    production: MilvusSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's case: ``eval-recall --prefix documents`` where ``documents`` is milvus.collection_prefix.
    No Ray runs for this test: reaching the pool would fail differently."""
    config = tmp_path / "settings.toml"
    config.write_text(
        f'[milvus]\nuri = "{production.uri}"\ncollection_prefix = "{production.collection_prefix}"\n'
        '[ray]\naddress = "127.0.0.1:1"\n'
    )
    before = replica_pks(production)
    argv = ["--config", str(config), "eval-recall", "--prefix", production.collection_prefix]
    assert main([*argv, "--text-dir", str(CORPUS), "--out", str(tmp_path)]) == 2
    assert "configuration error: eval-recall refuses the collection prefix" in capsys.readouterr().err
    assert replica_pks(production) == before


def test_eval_recall_rebuilds_and_reuses_only_its_own_marked_replicas(milvus_lite_uri: str) -> None:
    mine = milvus(milvus_lite_uri, f"recall_{uuid.uuid4().hex[:8]}")
    rebuild_replicas(mine, DIMS, "documents")
    assert all(MARK.items() <= properties(mine, dim).items() for dim in DIMS)
    write_replicas(mine)  # a previous run's rows, in collections eval-recall created
    claim_prefix(mine, "documents")  # --reuse-index may read them
    rebuild_replicas(mine, DIMS, "documents")  # and a new run drops and recreates them, marked again
    assert replica_pks(mine) == {dim: [] for dim in DIMS}
    assert all(MARK.items() <= properties(mine, dim).items() for dim in DIMS)
    # One replica of the prefix that eval-recall did not create is enough to refuse the whole prefix.
    stranger = MilvusSink(mine, (8,))
    try:
        stranger.ensure_collections()
    finally:
        stranger.close()
    with pytest.raises(ConfigError, match=rf"would drop them: {mine.collection_prefix}_8\. "):
        rebuild_replicas(mine, DIMS, "documents")
    assert all(MARK.items() <= properties(mine, dim).items() for dim in DIMS)  # nothing was dropped
    assert properties(mine, 8) == {}
