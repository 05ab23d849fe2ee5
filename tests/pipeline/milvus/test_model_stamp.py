"""Model stamps and version sets on a real Milvus Lite file: what a replica records, what is refused."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.milvus.connection import MilvusConnection
from pipeline.milvus.model_stamp import UNKNOWN, ModelStamp, check_stamps, stamp_of, weights_digest
from pipeline.milvus.rows import UNKNOWN_POSITION
from pipeline.milvus.schema import collection_properties, ensure_replicas
from pipeline.runtime.versions import (
    fill_settings,
    list_versions,
    prepare_replicas,
    readable_replicas,
    serving_version,
    set_serving,
    version_settings,
)
from pipeline.settings import MilvusSettings, ReplicaSettings, SearchSettings, Settings
from workers.errors import ConfigError
from workers.model.embedding_model import ModelInfo
from workers.settings import ModelSettings


def _stamp(model: str = "m", revision: str = "r1", **changes: object) -> ModelStamp:
    values: dict[str, object] = {
        "model": model,
        "revision": revision,
        "pooling": "last_token",
        "normalization": "matryoshka-cut-then-l2",
        "native_dim": 64,
        "instruction_template": "Instruct: {instruction}\nQuery:{text}",
    }
    return ModelStamp(**(values | changes))  # type: ignore[arg-type]


def test_a_stamp_round_trips_through_collection_properties() -> None:
    stamp = _stamp(adapter="lora-a")
    assert ModelStamp.from_properties(stamp.properties()) == stamp
    assert ModelStamp.from_properties({"embedstream.created_by": "eval-recall"}) is None


def test_differences_compare_revisions_and_names_only_where_a_revision_is_unknown() -> None:
    assert _stamp("/a/qwen", "r1").differences(_stamp("/b/qwen", "r1")) == []  # same files, another path
    assert _stamp("m", "r1").differences(_stamp("m", "r2")) == ["revision: 'r1' != 'r2'"]
    assert _stamp("m", UNKNOWN).differences(_stamp("n", "r1")) == ["model: 'm' != 'n'"]
    assert _stamp().differences(_stamp(pooling="mean", native_dim=32)) == [
        "pooling: 'last_token' != 'mean'",
        "native_dim: 64 != 32",
    ]
    assert _stamp().differences(_stamp(adapter="lora")) == ["adapter: '' != 'lora'"]


def test_the_weights_digest_tells_checkpoints_of_one_shape_apart(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    for folder, seed in ((one, 0), (two, 1)):
        folder.mkdir()
        (folder / "config.json").write_text('{"hidden_size": 64}')
        weights = np.random.default_rng(seed).standard_normal(300_000).astype(np.float32).tobytes()
        (folder / "model.safetensors").write_bytes(weights)
    assert weights_digest(str(one)) != weights_digest(str(two))
    assert weights_digest(str(one)) == weights_digest(str(one))
    assert weights_digest("org/not-a-local-folder") == UNKNOWN


def test_the_stamp_of_a_model_tolerates_model_info_with_or_without_an_adapter(tmp_path: Path) -> None:
    info = ModelInfo(name=str(tmp_path), native_dim=64, max_length=32, device="cpu", dtype="float32",
                     pooling="mean")  # fmt: skip
    stamp = stamp_of(info, ModelSettings(name_or_path=str(tmp_path)))
    assert (stamp.model, stamp.pooling, stamp.native_dim, stamp.adapter) == (str(tmp_path), "mean", 64, "")


def test_version_settings_give_each_version_its_prefix_group_and_namespace() -> None:
    base = Settings(search=SearchSettings(collection_tasks={"documents": "find code"}))
    assert version_settings(base, 1) is base
    v3 = fill_settings(base, 3)
    assert v3.milvus.collection_prefix == "documents_v3"
    assert v3.kafka.group_id == "embedstream-v3"
    assert v3.ray.namespace == f"{base.ray.namespace}-v3"
    assert v3.kafka.auto_offset_reset == "earliest"
    assert v3.search.task_for(v3.milvus.collection_prefix) == "find code"
    with pytest.raises(ConfigError):
        version_settings(base, 0)


@pytest.fixture(params=["lite-file", "standalone"])
def lite(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Settings, MilvusConnection]]:
    """A Milvus Lite file of its own, then the session's Milvus 2.3.5 standalone (a prefix of its own)."""
    uri = str(tmp_path / "lite.db")
    if request.param == "standalone":
        uri = str(request.getfixturevalue("milvus_standalone_uri"))
    settings = Settings(
        milvus=MilvusSettings(uri=uri, collection_prefix=f"docs_{uuid.uuid4().hex[:8]}", index_type="FLAT"),
        replicas=ReplicaSettings(dims=(64, 16)),
    )
    connection = MilvusConnection(settings.milvus)
    try:
        yield settings, connection
    finally:
        connection.close()


def _insert(connection: MilvusConnection, name: str, dim: int) -> None:
    row = {"pk": "d#0", "doc_id": "d", "chunk_index": 0, "text": "t", "metadata": {}}
    row |= {"src_partition": UNKNOWN_POSITION, "src_offset": UNKNOWN_POSITION}  # written by a tool
    row["embedding"] = [1.0] * dim
    connection.call("inserting", "upsert", name, [row])


def test_a_worker_of_another_model_is_refused_saying_how_to_move(
    lite: tuple[Settings, MilvusConnection],
) -> None:
    settings, connection = lite
    p = settings.milvus.collection_prefix
    prepare_replicas(settings, settings, _stamp("qwen-0.6b"), (64, 16))
    assert ModelStamp.from_properties(collection_properties(connection, f"{p}_64")) == _stamp("qwen-0.6b")
    with pytest.raises(ConfigError, match=r"was made by qwen-0\.6b") as refused:
        prepare_replicas(settings, settings, _stamp("qwen-4b", "r2"), (64, 16))
    assert "run --into-version 2" in str(refused.value)
    assert "versions switch 2" in str(refused.value)
    with pytest.raises(ConfigError, match=r"was made by qwen-0\.6b"):
        readable_replicas(settings, settings, _stamp("qwen-4b", "r2"), (64, 16))


def test_an_unstamped_replica_is_used_when_empty_or_adopted_and_refused_when_it_holds_rows(
    lite: tuple[Settings, MilvusConnection],
) -> None:
    settings, connection = lite
    p = settings.milvus.collection_prefix
    names = {64: f"{p}_64", 16: f"{p}_16"}
    ensure_replicas(connection, settings.milvus, names)  # as before stamps existed
    check_stamps(connection, {16: f"{p}_16"}, _stamp(), fix="...")  # empty: stamped now
    assert ModelStamp.from_properties(collection_properties(connection, f"{p}_16")) == _stamp()
    _insert(connection, f"{p}_64", 64)
    with pytest.raises(ConfigError, match="run --adopt"):
        check_stamps(connection, names, _stamp(), fix="...")
    prepare_replicas(settings, settings, _stamp(), (64, 16), adopt=True)
    assert ModelStamp.from_properties(collection_properties(connection, f"{p}_64")) == _stamp()


def test_a_dimension_added_beside_replicas_that_hold_rows_is_refused_not_left_empty(
    lite: tuple[Settings, MilvusConnection],
) -> None:
    settings, connection = lite
    p = settings.milvus.collection_prefix
    prepare_replicas(settings, settings, _stamp(), (64,))
    prepare_replicas(settings, settings, _stamp(), (64, 32))  # nothing written yet: added, complete
    _insert(connection, f"{p}_64", 64)
    _insert(connection, f"{p}_32", 32)
    with pytest.raises(ConfigError, match=r"asks for \[16\].*run --into-version 2"):
        prepare_replicas(settings, settings, _stamp(), (64, 32, 16))
    assert not connection.call("looking up", "has_collection", f"{p}_16")
    # search reads the replicas the version has
    assert readable_replicas(settings, settings, _stamp(), (64, 32, 16)) == (64, 32)


def test_the_serving_record_and_the_version_list(lite: tuple[Settings, MilvusConnection]) -> None:
    settings, connection = lite
    p = settings.milvus.collection_prefix
    assert serving_version(connection, p) == 1
    prepare_replicas(settings, settings, _stamp(), (64, 16))
    v2 = version_settings(settings, 2)
    prepare_replicas(settings, v2, _stamp("other"), (64,))
    set_serving(connection, p, 2)
    assert serving_version(connection, p) == 2
    assert list_versions(connection, p) == {1: {64: f"{p}_64", 16: f"{p}_16"}, 2: {64: f"{p}_v2_64"}}


def test_the_stamp_records_the_unmerged_adapter_by_name_and_digest(tmp_path: Path) -> None:
    info = ModelInfo(name=str(tmp_path), native_dim=64, max_length=32, device="cpu", dtype="float32",
                     pooling="mean", adapters={"legal": "/adapters/legal@0123456789ab"})  # fmt: skip
    settings = ModelSettings(name_or_path=str(tmp_path))
    stamp = stamp_of(info, settings, "legal")
    assert (stamp.named_adapter, stamp.adapter_name) == ("legal@0123456789ab", "legal")
    assert ModelStamp.from_properties(stamp.properties()) == stamp
    base = stamp_of(info, settings)
    assert base.adapter_name is None
    assert base.differences(stamp) == ["named_adapter: '' != 'legal@0123456789ab'"]
    with pytest.raises(ConfigError, match="'medical' is not loaded"):
        stamp_of(info, settings, "medical")
