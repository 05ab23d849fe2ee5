"""Each service fixture really works: a record through Tansu, a collection on both Milvus, Ray with auth."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import ray
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from pymilvus import DataType, MilvusClient

from pipeline.milvus.connection import open_client

if TYPE_CHECKING:
    from helpers.services import RayCluster

pytestmark = pytest.mark.slow


async def test_a_record_goes_through_the_broker(kafka_bootstrap: str) -> None:
    topic = f"smoke-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=False)
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, b"hello", key=b"doc-1", headers=[("h", b"1")])
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topic, sent.partition)
        consumer.assign([tp])
        consumer.seek(tp, sent.offset)
        batch = await consumer.getmany(tp, timeout_ms=10_000)
    finally:
        await consumer.stop()
    [record] = batch[tp]
    assert (record.key, record.value, list(record.headers)) == (b"doc-1", b"hello", [("h", b"1")])


@pytest.mark.parametrize("server", ["milvus_lite_uri", "milvus_standalone_uri"])
def test_a_collection_is_created_filled_and_queried(server: str, request: pytest.FixtureRequest) -> None:
    client = open_client(request.getfixturevalue(server), timeout=30)
    name = f"smoke_{uuid.uuid4().hex[:8]}"
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=600)
    schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=4)
    index = client.prepare_index_params()
    index.add_index(
        "embedding", index_type="HNSW", metric_type="COSINE", params={"M": 8, "efConstruction": 64}
    )
    try:
        client.create_collection(name, schema=schema, index_params=index, consistency_level="Strong")
        rows = [{"pk": f"doc#{i}", "embedding": [float(i == j) for j in range(4)]} for i in range(3)]
        assert client.insert(name, rows)["insert_count"] == 3
        client.load_collection(name)
        found = client.query(name, filter='pk in ["doc#1", "doc#2"]', output_fields=["pk"])
        assert sorted(r["pk"] for r in found) == ["doc#1", "doc#2"]
        [[best, *_]] = client.search(
            name, [[0.0, 0.0, 1.0, 0.1]], limit=2, anns_field="embedding", output_fields=["pk"]
        )
        # Milvus Lite names a hit's key by the primary field, Milvus 2.3.5 "id" (+ entity["pk"] asked for).
        assert best["pk"] == "doc#2"
    finally:
        client.drop_collection(name)
        client.close()


@ray.remote
def _square(x: int) -> int:
    return x * x


def test_this_process_is_a_driver_of_the_cluster(ray_session: None) -> None:
    assert ray.get([_square.remote(i) for i in range(4)]) == [0, 1, 4, 9]
    assert ray.cluster_resources()["CPU"] >= 1


_DRIVER = """
import ray, sys
ray.init(address=sys.argv[1], log_to_driver=False)
print("answer", ray.get(ray.remote(lambda: 6 * 7).remote()))
"""


def _driver(address: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _DRIVER, address], env=env, capture_output=True, text=True, timeout=120
    )


def _env_without_ray_auth(home: Path) -> dict[str, str]:
    # A separate HOME hides any ~/.ray/auth_token; a short GCS wait makes the refusal quick.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    return env | {"HOME": str(home), "RAY_gcs_server_port_wait_time_s": "2"}


def test_a_driver_process_with_the_token_runs_tasks(ray_cluster: RayCluster, tmp_path: Path) -> None:
    result = _driver(ray_cluster.address, _env_without_ray_auth(tmp_path) | ray_cluster.env)
    assert "answer 42" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize(
    "auth", [{}, {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}], ids=["no-token", "wrong-token"]
)
def test_a_driver_without_the_token_is_refused(
    ray_cluster: RayCluster, tmp_path: Path, auth: dict[str, str]
) -> None:
    result = _driver(ray_cluster.address, _env_without_ray_auth(tmp_path) | auth)
    assert result.returncode != 0
    assert "answer" not in result.stdout
    assert "InvalidAuthToken" in result.stderr, result.stderr[-3000:]
