"""Two Ray nodes on one machine: a head plus a second node joined with ``ray start --address``.

The worker runs as a separate driver process (consumer actors + embedder actors), first on the
head alone (one embedder, one consumer), then on both nodes (two of each).  Custom resources
(``embedder_slot``, ``consumer_slot``: one of each per node) spread the actors over the nodes.
Both runs must lose nothing: every partition committed to its end and one row per document in
every replica.  Each consumer's events and busy time (on its own clock) and the driver's wall time of
both runs are reported, with no group-wide events/s (no one measured the group's span); with
``MULTINODE_RESULT=path`` they are written there as JSON.  On a 2-core machine both nodes share the
same cores, so two nodes are not expected to be faster there; the test asserts correctness and
placement, not speed.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers.kafka_io import Record, assert_all_committed, produce
from helpers.settings import private_settings

from pipeline.milvus.sink import MilvusSink
from pipeline.ops import services, stack
from pipeline.ops.processes import HOST, ManagedProcess, console_script, free_port
from pipeline.settings import Settings, StackSettings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DOCUMENTS = 300
DIM = 384


def _start_second_node(head: str, token: Path, data_dir: Path) -> ManagedProcess:
    argv = [
        console_script("ray"),
        "start",
        f"--address={head}",
        "--block",
        "--disable-usage-stats",
        "--num-cpus=2",
        '--resources={"embedder_slot": 1, "consumer_slot": 1}',
        f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    node = ManagedProcess("ray-node-2", data_dir, head, term_leader_only=True)
    node.start(argv, env)
    return node


def _alive_nodes(dashboard: str, token: Path) -> int:
    import urllib.request

    request = urllib.request.Request(
        f"http://{dashboard}/api/v0/nodes", headers={"Authorization": f"Bearer {token.read_text().strip()}"}
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        nodes = json.load(response)["data"]["result"]["result"]
    return sum(node.get("state") == "ALIVE" for node in nodes)


def _run_pipeline(env: dict[str, str], members: int, label: str) -> dict[str, Any]:
    """Ingest a fresh topic of DOCUMENTS with ``members`` embedders and consumers; checks zero loss."""
    settings = private_settings(
        env["PIPELINE_KAFKA__BOOTSTRAP_SERVERS"],
        env["PIPELINE_MILVUS__URI"],
        name="mn",
        kafka={"partitions": 4},
        ray_namespace=True,
    )
    kafka, milvus = settings.kafka, settings.milvus
    documents = [
        Record(
            f"doc-{i}".encode(),
            json.dumps({"id": f"doc-{i}", "text": f"Short document number {i} about nodes."}).encode(),
        )
        for i in range(DOCUMENTS)
    ]
    asyncio.run(produce(kafka, documents))
    run_env = env | {
        "PIPELINE_KAFKA__TOPIC": kafka.topic,
        "PIPELINE_KAFKA__DLQ_TOPIC": kafka.dlq_topic,
        "PIPELINE_KAFKA__GROUP_ID": kafka.group_id,
        "PIPELINE_MILVUS__COLLECTION_PREFIX": milvus.collection_prefix,
        "PIPELINE_RAY__NAMESPACE": settings.ray.namespace,
        "PIPELINE_POOL__NUM_ACTORS": str(members),
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("multinode_driver.py")), str(members)],
        env=run_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    wall = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["events"] >= DOCUMENTS  # a restarted member may re-read uncommitted events
    asyncio.run(assert_all_committed(kafka, f"{label}: "))
    sink = MilvusSink(milvus, (DIM,))
    try:
        assert sink.count(DIM) == DOCUMENTS, f"{label}: rows in Milvus"
    finally:
        sink.close()
    result["driver_wall_seconds"] = round(wall, 1)
    return result


def test_pipeline_spreads_over_two_nodes_and_loses_nothing(
    tmp_path: Path, kafka_bootstrap: str, milvus_lite_uri: str, minilm_path: Path
) -> None:
    slots = {"embedder_slot": 1, "consumer_slot": 1}
    stack_settings = StackSettings(
        data_dir=tmp_path / "head",
        ray_port=free_port(),
        dashboard_port=free_port(),
        ray_num_cpus=2,
        ray_resources=slots,
    )
    settings = Settings(stack=stack_settings)
    head = services.start_ray_head(stack_settings)
    token = stack_settings.data_dir.resolve() / "ray" / "auth_token"
    dashboard = f"{HOST}:{stack_settings.dashboard_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PIPELINE_"))}
    env |= stack.ray_client_env(settings) | {
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "PIPELINE_RAY__ADDRESS": stack.ray_address(settings),
        "PIPELINE_KAFKA__BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PIPELINE_MILVUS__URI": milvus_lite_uri,
        "PIPELINE_MODEL__NAME_OR_PATH": str(minilm_path),
        "PIPELINE_POOL__CPUS_PER_ACTOR": "1",
        # Each run's actors die with its driver: a detached one would keep the head's embedder_slot.
        "PIPELINE_POOL__DETACHED": "false",
        "PIPELINE_POOL__ACTOR_RESOURCES": json.dumps({"embedder_slot": 1}),
        "PIPELINE_SCALING__CONSUMER_CPUS": "0.5",
        "PIPELINE_SCALING__CONSUMER_RESOURCES": json.dumps({"consumer_slot": 1}),
        "PIPELINE_CONSUMER__COMMIT_INTERVAL_S": "0.3",
    }
    node: ManagedProcess | None = None
    try:
        one = _run_pipeline(env, 1, "1 node")
        node = _start_second_node(stack.ray_address(settings), token, tmp_path / "node-2")
        node.wait_ready(lambda: _alive_nodes(dashboard, token) == 2, 120)
        two = _run_pipeline(env, 2, "2 nodes")
        assert one["nodes"] == 1 and two["nodes"] == 2
        # One embedder and one consumer per node: the resources leave no other placement.
        for role in ("embedder", "consumer"):
            assert len({two["placement"][f"{role}-{i}"] for i in range(2)}) == 2, two["placement"]
        figures = {
            "what": f"{DOCUMENTS} one-chunk documents, MiniLM on CPU, 4 partitions; "
            "1 node = 1 embedder + 1 consumer actor, 2 nodes = 2 + 2",
            "machine": f"{os.cpu_count()} CPU cores shared by both Ray nodes",
            "command": "MULTINODE_RESULT=tests/perf/results/multinode-cpu.json "
            "python -m pytest tests/integration/test_multinode.py -s",
            "one_node": one,
            "two_nodes": two,
        }
        print(json.dumps(figures, indent=2))
        if out := os.environ.get("MULTINODE_RESULT"):
            Path(out).write_text(json.dumps(figures, indent=2) + "\n")
    finally:
        if node is not None:
            node.stop(40)
        head.stop(40)
        stack.down(settings)
