from __future__ import annotations

import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from pipeline.settings import RerankerSettings, Settings, load_settings
from workers.errors import ConfigError


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in [n for n in os.environ if n.startswith("PIPELINE_")]:
        monkeypatch.delenv(name)


def test_environment_nests_with_double_underscore_and_lists_are_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_KAFKA__BOOTSTRAP_SERVERS", "broker:9093")
    monkeypatch.setenv("PIPELINE_REPLICAS__DIMS", "[128, 512, 128]")
    monkeypatch.setenv("PIPELINE_MODEL__POOLING", "cls")
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "broker:9093"
    assert settings.replicas.dims == (512, 128)  # sorted widest first, duplicates dropped
    assert settings.model.pooling == "cls"


def test_toml_file_is_read_and_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "settings.toml"
    config.write_text(
        '[kafka]\ntopic = "from-file"\ngroup_id = "file-group"\n[milvus]\ncollection_prefix = "docs"\n'
    )
    monkeypatch.setenv("PIPELINE_KAFKA__GROUP_ID", "env-group")
    settings = load_settings(config)
    assert settings.kafka.topic == "from-file"
    assert settings.kafka.group_id == "env-group"
    assert settings.milvus.collection_prefix == "docs"


def test_bad_settings_are_one_clear_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_KAFKA__PARTITIONS", "0")
    monkeypatch.setenv("PIPELINE_MILVUS__COLLECTION_PREFIX", "has space")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "kafka.partitions" in message and "milvus.collection_prefix" in message
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "missing.toml")
    monkeypatch.delenv("PIPELINE_KAFKA__PARTITIONS")
    monkeypatch.delenv("PIPELINE_MILVUS__COLLECTION_PREFIX")
    monkeypatch.setenv("PIPELINE_KAFKA__TOPICS", "typo")  # unknown keys are refused, not ignored
    with pytest.raises(ConfigError, match="topics"):
        load_settings()


def test_heartbeat_must_be_shorter_than_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_KAFKA__SESSION_TIMEOUT_MS", "4000")
    assert load_settings().kafka.session_timeout_ms == 4000
    monkeypatch.setenv("PIPELINE_KAFKA__HEARTBEAT_INTERVAL_MS", "4000")
    with pytest.raises(ConfigError, match="heartbeat_interval_ms"):
        load_settings()


@pytest.mark.parametrize(
    ("section", "low", "high"),
    [("milvus", "ivf_nprobe", "ivf_nlist"), ("scaling", "min_embedders", "max_embedders")],
)
def test_contradictory_bounds_are_one_clear_config_error(
    monkeypatch: pytest.MonkeyPatch, section: str, low: str, high: str
) -> None:
    def set_env(name: str, value: int) -> None:
        monkeypatch.setenv(f"PIPELINE_{section.upper()}__{name.upper()}", str(value))

    set_env(high, 8)
    set_env(low, 8)
    assert getattr(getattr(load_settings(), section), low) == 8  # equal bounds are consistent
    set_env(low, 9)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    expected = f"invalid settings: {section}: Value error, {low} (9) must be at most {high} (8)"
    assert str(caught.value) == expected
    assert isinstance(caught.value.__cause__, ValidationError)


def test_replica_dims_always_include_the_native_one_and_refuse_wider() -> None:
    settings = Settings(replicas={"dims": [256, 128]})
    assert settings.replicas.replica_dims(384) == (384, 256, 128)
    with pytest.raises(ConfigError, match=r"replicas.dims \[2048\] are not integers in 1\.\.1024"):
        Settings(replicas={"dims": [2048, 256]}).replicas.replica_dims(1024)


def test_renamed_sections_keep_their_old_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """[worker] became [consumer] and [embedding] became [replicas]; old keys still configure them."""
    monkeypatch.setenv("PIPELINE_WORKER__MAX_BATCH_EVENTS", "7")
    monkeypatch.setenv("PIPELINE_EMBEDDING__DIMS", "[64]")
    settings = load_settings()
    assert settings.consumer.max_batch_events == 7
    assert settings.replicas.dims == (64,)
    monkeypatch.delenv("PIPELINE_WORKER__MAX_BATCH_EVENTS")
    monkeypatch.delenv("PIPELINE_EMBEDDING__DIMS")
    toml = tmp_path / "old.toml"
    toml.write_text("[worker]\ncommit_interval_s = 2.5\n\n[embedding]\ndims = [32, 16]\n")
    settings = load_settings(toml)
    assert settings.consumer.commit_interval_s == 2.5
    assert settings.replicas.dims == (32, 16)
    assert Settings(worker={"max_batch_events": 3}).consumer.max_batch_events == 3


def test_secrets_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIPELINE_KAFKA__SASL_PASSWORD", "kafka-secret-1")
    monkeypatch.setenv("PIPELINE_MILVUS__TOKEN", "root:milvus-secret-2")
    monkeypatch.setenv("PIPELINE_RAY__AUTH_TOKEN", "ray-secret-3")
    settings = load_settings()
    assert settings.milvus.token is not None and settings.milvus.token.get_secret_value().endswith("secret-2")
    for shown in (str(settings), repr(settings), settings.model_dump_json(), str(settings.model_dump())):
        assert "secret-1" not in shown and "secret-2" not in shown and "secret-3" not in shown


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    found = [model]
    for field in model.model_fields.values():
        # An optional section (``RerankerSettings | None``) is walked like a required one.
        for annotation in (field.annotation, *typing.get_args(field.annotation)):
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                found += _models(annotation)
    return found


def test_every_setting_is_described_and_frozen() -> None:
    for model in _models(Settings):
        assert model.model_config.get("frozen"), model.__name__
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_the_example_config_in_infra_loads() -> None:
    example = Path(__file__).parents[2] / "infra" / "embedstream.example.toml"
    settings = load_settings(example)
    assert settings.replicas.dims == (256, 128)
    assert settings.kafka.dlq_topic == "documents.dlq" and settings.model.packing == "auto"


def test_the_reranker_section_is_absent_by_default_and_nests_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings().reranker is None
    monkeypatch.setenv("PIPELINE_RERANKER__NAME_OR_PATH", "/models/reranker")
    monkeypatch.setenv("PIPELINE_RERANKER__NUM_ACTORS", "2")
    reranker = load_settings().reranker
    assert reranker is not None and (reranker.name_or_path, reranker.num_actors) == ("/models/reranker", 2)
    assert RerankerSettings in _models(Settings)


def test_units_default_to_the_budget_in_bytes_but_never_past_the_cap() -> None:
    from pipeline.settings.ingest import DEFAULT_MAX_UNIT_BYTES, ConsumerSettings

    assert ConsumerSettings().unit_bytes(131072) == 131072
    # A large budget keeps units small: each must be chunked whole before any of it is embedded.
    assert ConsumerSettings().unit_bytes(4 * DEFAULT_MAX_UNIT_BYTES) == DEFAULT_MAX_UNIT_BYTES
    assert ConsumerSettings(max_unit_bytes=2**21).unit_bytes(2**22) == 2**21


def test_the_in_flight_budget_is_adaptive_unless_fixed() -> None:
    from pipeline.settings.ingest import ADAPTIVE_MAX_TOKENS, ConsumerSettings

    assert ConsumerSettings().max_inflight_tokens is None
    assert ConsumerSettings().largest_inflight_tokens() == ADAPTIVE_MAX_TOKENS
    assert ConsumerSettings(max_inflight_tokens=524288).largest_inflight_tokens() == 524288
    with pytest.raises(ValidationError):
        ConsumerSettings(inflight_seconds=0)
