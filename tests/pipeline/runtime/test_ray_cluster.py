"""Joining Ray with a token given as a value: it works, and the token stays out of this process's
environment (every child would inherit it) and out of what the consumer actors are given."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.services import RayCluster
from pydantic import SecretStr

from pipeline.runtime.consumer_actors import with_node_secrets, without_secrets
from pipeline.settings import KafkaSettings, MilvusSettings, RaySettings, Settings
from workers.errors import ConfigError

_DRIVER = """
import os, subprocess, sys
import ray
from pipeline.runtime.ray_cluster import connect_ray
from pipeline.settings import Settings

settings = Settings.model_validate({"ray": {"address": sys.argv[1], "auth_token": sys.argv[2]}})
connect_ray(settings)
print("joined", ray.get(ray.remote(lambda: 42).remote()), len(ray.util.list_named_actors()) >= 0)
print("env", "RAY_AUTH_TOKEN" in os.environ)
child = subprocess.run([sys.executable, "-c", "import os; print(os.environ.get('RAY_AUTH_TOKEN'))"],
                       capture_output=True, text=True, check=True)
print("child", child.stdout.strip())
"""


def test_a_token_given_as_a_value_joins_and_is_not_left_in_the_environment(ray_cluster: RayCluster) -> None:
    token = Path(ray_cluster.env["RAY_AUTH_TOKEN_PATH"]).read_text().strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    done = subprocess.run(
        [sys.executable, "-c", _DRIVER, ray_cluster.address, token],
        env={**env, "PYTHONPATH": str(Path(__file__).parents[3])},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["joined 42 True", "env False", "child None"], done.stdout
    assert token not in done.stdout + done.stderr


SECRETS = {"sasl": "sasl-secret-4711", "milvus": "root:milvus-secret-4711", "ray": "ray-secret-4711"}


def _with_secret_values() -> Settings:
    return Settings(
        kafka=KafkaSettings(sasl_password=SecretStr(SECRETS["sasl"])),
        milvus=MilvusSettings(token=SecretStr(SECRETS["milvus"])),
        ray=RaySettings(auth_token=SecretStr(SECRETS["ray"])),
    )


def test_consumer_actor_arguments_hold_no_secret_and_name_what_the_node_must_give() -> None:
    shared, needed = without_secrets(_with_secret_values())
    blob = pickle.dumps(shared)
    assert not any(secret.encode() in blob for secret in SECRETS.values())
    assert needed == ("kafka.sasl_password", "milvus.token")  # Ray's token: actors are inside already
    assert shared.kafka.bootstrap_servers == KafkaSettings().bootstrap_servers


def test_a_consumer_actor_takes_its_secrets_from_its_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared, needed = without_secrets(_with_secret_values())
    for name in [n for n in os.environ if n.startswith("PIPELINE_")]:
        monkeypatch.delenv(name)
    with pytest.raises(
        ConfigError, match=r"consumer-0: kafka\.sasl_password .*PIPELINE_KAFKA__SASL_PASSWORD"
    ):
        with_node_secrets(shared, needed, "consumer-0")
    token_file = tmp_path / "milvus-token"
    token_file.write_text(SECRETS["milvus"] + "\n")
    monkeypatch.setenv("PIPELINE_KAFKA__SASL_PASSWORD", SECRETS["sasl"])
    monkeypatch.setenv("PIPELINE_MILVUS__TOKEN_FILE", str(token_file))
    resolved = with_node_secrets(shared, needed, "consumer-0")
    assert resolved.kafka.sasl_secret() == SECRETS["sasl"]
    assert resolved.milvus.token_secret() == SECRETS["milvus"]  # read from the node's file
    assert resolved.ray.auth_token is None


def test_a_secret_and_its_file_together_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="give token or token_file, not both"):
        MilvusSettings(token=SecretStr("x"), token_file=tmp_path / "t")
