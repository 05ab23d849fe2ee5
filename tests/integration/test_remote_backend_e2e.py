"""The `run` verb with ``embedder.backend = "openai"`` against this project's own `serve`, a separate
process that embeds with Ray actors of its own: real broker, Milvus Lite and Ray.

Every event's rows are in every replica (the oracle of tests/helpers/oracle.py), the offsets are
committed to the end, the stored vectors equal the actor path's (the same texts embedded on an
EmbedderPool here, cosine >= 0.9999 on every replica), and the read side (`search`, `serve`'s
``/v1/search`` and ``/v1/embeddings``) works on the remote backend too.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession
from helpers.app_server import serving
from helpers.kafka_io import Record, assert_all_committed, produce, read_topic
from helpers.oracle import StreamOracle, compare, random_text, read_replicas
from helpers.services import RayCluster, pipeline_process_env
from helpers.settings import private_settings, write_toml

from pipeline.milvus.sink import MilvusSink
from pipeline.ops.processes import HOST, free_port
from pipeline.runtime.embedders import start_pool
from pipeline.runtime.serving import open_query_side
from pipeline.search.api import Api
from pipeline.settings import EmbedderSettings, Settings
from workers.model.tokenizer import load_text_tokenizer
from workers.prompts import format_input

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

SERVE_START_S = 300.0


@contextlib.contextmanager
def serve_process(minilm_path: Path, milvus_uri: str, ray: RayCluster, log: Path) -> Iterator[str]:
    """`python -m pipeline serve` on MiniLM with one actor of its own (a namespace of its own on the
    test's Ray cluster); yields its base URL ``http://host:port/v1`` once /health answers."""
    port = free_port()
    run = uuid.uuid4().hex[:8]
    env = pipeline_process_env(ray.address, ray.env)
    env |= {
        "PIPELINE_RAY__NAMESPACE": f"serve-{run}",
        "PIPELINE_MODEL__NAME_OR_PATH": str(minilm_path),
        "PIPELINE_MILVUS__URI": milvus_uri,
        "PIPELINE_MILVUS__COLLECTION_PREFIX": f"serve_{run}",
        "PIPELINE_POOL__NUM_ACTORS": "1",
        "PIPELINE_POOL__CPUS_PER_ACTOR": "1",
        "PIPELINE_POOL__DETACHED": "false",
    }
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "serve", "--port", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + SERVE_START_S
        while True:
            assert server.poll() is None, log.read_text()[-4000:]
            try:
                with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"serve did not answer /health:\n{log.read_text()[-4000:]}"
            time.sleep(0.5)
        yield f"http://{HOST}:{port}/v1"
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def _stream(seed: int = 14) -> StreamOracle:
    """~200 events: upserts (some with an instruction), updates, deletes, re-sends, malformed records."""
    rng = random.Random(seed)
    oracle = StreamOracle()
    ids = [f"doc-{i:03d}" for i in range(80)]
    while len(oracle.records) < 200:
        roll, doc_id = rng.random(), rng.choice(ids)
        if len(oracle.records) % 50 == 49:
            oracle.malformed_record(Record(doc_id.encode(), b"not json"), "JSON")
        elif roll < 0.1:
            oracle.delete(doc_id)
        elif roll < 0.13 and oracle.records:
            oracle.resend_last()
        else:
            event = {"id": doc_id, "text": random_text(rng, rng.choice((1, 2, 6))), "metadata": {"n": roll}}
            if roll > 0.8:
                event["instruction"] = "Represent this passage for retrieval"
            oracle.event(event)
    return oracle


async def test_run_on_serve_through_the_openai_backend_equals_the_actor_path(
    kafka_bootstrap: str,
    milvus_lite_uri: str,
    minilm_path: Path,
    ray_cluster: RayCluster,
    ray_session: None,
    tmp_path: Path,
) -> None:
    oracle = _stream()
    with serve_process(minilm_path, milvus_lite_uri, ray_cluster, tmp_path / "serve.log") as base_url:
        remote = EmbedderSettings(backend="openai", base_url=base_url, max_request_inputs=16)
        settings = private_settings(
            kafka_bootstrap, milvus_lite_uri, minilm_path, name="remote", dims=(128,), max_tokens=48,
            embedder=remote, pool={"cpus_per_actor": 1.0},
        )  # fmt: skip
        await produce(settings.kafka, oracle.records)
        out = await asyncio.to_thread(_run_verb, settings, ray_cluster, tmp_path)
        assert f"{len(oracle.records)} events: " in out, out[-3000:]
        await assert_all_committed(settings.kafka)
        sink = MilvusSink(settings.milvus, (384, 128))
        try:
            replicas = await asyncio.to_thread(read_replicas, sink)
            dead = await read_topic(settings.kafka, settings.kafka.dlq_topic)
            verdict = compare(oracle, replicas, dead, settings.kafka.topic)
            assert verdict.exact, verdict.summary()
            stored = {dim: await asyncio.to_thread(sink.fetch_all, dim) for dim in sink.dims}
        finally:
            sink.close()
        await _check_read_side(settings, sink.dims, oracle)
    await _check_against_the_actor_path(settings, stored, oracle)


def _run_verb(settings: Settings, ray: RayCluster, tmp_path: Path) -> str:
    """`python -m pipeline --config FILE run --until-idle 3` in a process of its own; its output."""
    config = write_toml(settings, tmp_path / "remote.toml")
    env = pipeline_process_env(ray.address, ray.env)
    command = [sys.executable, "-m", "pipeline", "--config", str(config), "run", "--until-idle", "3"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


async def _check_against_the_actor_path(
    settings: Settings, replicas: dict[int, list[dict[str, Any]]], oracle: StreamOracle
) -> None:
    """The same chunk inputs embedded on an actor pool here give the stored vectors, on every replica."""
    actors = settings.model_copy(update={"embedder": EmbedderSettings()})
    pool, dims = await start_pool(actors, namespace=f"remote-check-{uuid.uuid4().hex[:8]}")
    try:
        for dim in dims:
            rows = replicas[dim]
            assert rows
            inputs = [
                format_input(settings.model, r["text"], oracle.documents[r["doc_id"]].instruction)
                for r in rows
            ]
            expected = (await pool.embed(inputs, (dim,)))[dim]
            stored = np.array([r["embedding"] for r in rows], dtype=np.float32)
            cosines = np.sum(expected * stored, axis=1) / np.linalg.norm(stored, axis=1)
            assert cosines.min() >= 0.9999, (dim, cosines.min())
    finally:
        pool.shutdown()


async def _check_read_side(settings: Settings, dims: tuple[int, ...], oracle: StreamOracle) -> None:
    """`serve`'s query side on the remote backend: /v1/search finds a document by its own text, and
    /v1/embeddings answers the cut the API was asked for."""
    doc_id, expected = sorted(oracle.documents.items())[0]
    async with open_query_side(settings, "serve") as side:
        assert side.pool.info.device.startswith("remote ")
        tokenizer = await asyncio.to_thread(load_text_tokenizer, settings.model)
        app = Api(settings, side.pool, tokenizer, side.sink).app()
        async with serving(app) as url, ClientSession(url) as http:
            query = {"query": expected.text.split(".")[0], "top_k": 3, "dim": 384}
            async with http.post("/v1/search", json=query) as response:
                assert response.status == 200, await response.text()
                hits = (await response.json())["data"][0]["hits"]
            assert hits and hits[0]["doc_id"] == doc_id, hits
            cut = {"input": ["a b c"], "dimensions": 64}
            async with http.post("/v1/embeddings", json=cut) as response:
                assert response.status == 200, await response.text()
                vector = np.array((await response.json())["data"][0]["embedding"])
            assert vector.shape == (64,) and abs(np.linalg.norm(vector) - 1.0) < 1e-5
    assert dims == side.sink.dims
