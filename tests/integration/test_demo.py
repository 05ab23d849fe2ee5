"""The README's main command and the CLI verbs, as a user runs them, on a local stack of their own."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.ops.processes import free_port

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Environment of a user whose stack lives in a temp folder on free ports; ``down`` at the end."""
    kafka, milvus = free_port(), free_port()
    env = {
        **os.environ,
        "PIPELINE_STACK__DATA_DIR": str(tmp_path_factory.mktemp("stack")),
        "PIPELINE_STACK__KAFKA_PORT": str(kafka),
        "PIPELINE_STACK__MILVUS_PORT": str(milvus),
        "PIPELINE_STACK__RAY_PORT": str(free_port()),
        "PIPELINE_STACK__DASHBOARD_PORT": str(free_port()),
        "PIPELINE_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka}",
        "PIPELINE_MILVUS__URI": f"http://127.0.0.1:{milvus}",
        "PIPELINE_REPLICAS__DIMS": "[256, 128]",
    }
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        env.pop(name, None)  # the session's own Ray must not leak into the user's shell
    try:
        yield env
    finally:
        subprocess.run([sys.executable, "-m", "pipeline", "down"], env=env, timeout=120, check=False)


def _cli(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=Path(__file__).parents[2],
    )
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}\n{done.stderr[-4000:]}"
    return done.stdout


def _check_the_api(env: dict[str, str]) -> None:
    """`serve` on the demo's stack: embeddings through the real openai client, then a routed search."""
    import json
    import signal
    import time
    import urllib.request

    import openai

    url = f"http://127.0.0.1:{free_port()}"
    server = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "serve", "--port", url.rsplit(":", 1)[1]],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    try:
        deadline = time.monotonic() + 300
        while True:
            assert server.poll() is None, server.communicate()[0][-4000:]
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2).read()
                break
            except OSError:
                assert time.monotonic() < deadline, "serve did not answer /health within 300 s"
                time.sleep(1)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        model = "sentence-transformers/all-MiniLM-L6-v2"
        embedded = client.embeddings.create(model=model, input=["honey", "tides"], dimensions=128)
        assert [len(d.embedding) for d in embedded.data] == [128, 128] and embedded.usage.total_tokens > 0
        body = json.dumps({"query": "how do bees make honey", "recall_target": 0.9, "top_k": 2}).encode()
        request = urllib.request.Request(f"{url}/v1/search", body, {"Content-Type": "application/json"})
        [result] = json.loads(urllib.request.urlopen(request, timeout=60).read())["data"]
        assert result["hits"][0]["doc_id"] == "beekeeping-basics.md", result
        # No profile was measured on this stack: routing says so and answers with the native replica.
        assert result["strategy"] == "replica 384d", result
        assert result["routing"].startswith("no recall/latency profile was measured"), result
    finally:
        server.send_signal(signal.SIGINT)
        out = server.communicate(timeout=120)[0]
    assert server.returncode == 0, out[-4000:]


def test_demo_then_status_search_and_down(cli_env: dict[str, str]) -> None:
    out = _cli(cli_env, "demo")
    assert "24 events -> 24 documents" in out and "0 dead-lettered" in out, out
    assert f"http://127.0.0.1:{cli_env['PIPELINE_STACK__DASHBOARD_PORT']}" in out
    for dim in (384, 256, 128):
        assert f"search on the {dim}-dimension replica" in out
    # The right document tops each demo query on every replica.
    sections = out.split("== search on the ")[1:]
    for section in sections:
        firsts = [line.split()[2] for line in section.splitlines() if line.strip().startswith("1. ")]
        assert [f.split("#")[0] for f in firsts] == [
            "sourdough-bread.md",
            "tides-and-the-moon.md",
            "kafka-consumer-groups.md",
            "first-aid-for-burns.md",
        ], section

    status = _cli(cli_env, "status")
    assert ": up" in status.splitlines()[0], status
    assert "lag 0" in status and "dead-letter topic documents.dlq: 0 records" in status, status
    rows = {
        line.split(":")[0].strip(): line
        for line in status.splitlines()
        if line.strip().startswith("documents_")
    }
    assert set(rows) == {"documents_384", "documents_256", "documents_128"}, status
    assert len({line.split(":")[1] for line in rows.values()}) == 1  # every replica holds the same rows

    hits = _cli(cli_env, "search", "how do bees make honey", "--dim", "128", "--top-k", "2")
    assert "1. " in hits and "beekeeping-basics.md#" in hits.split("2. ")[0], hits
    funnel = _cli(cli_env, "search", "how do bees make honey", "--funnel", "5", "--top-k", "2")
    assert "(funnel 128d×5)" in funnel and "beekeeping-basics.md#" in funnel.split("2. ")[0], funnel
    too_long = subprocess.run(  # MiniLM takes 256 tokens: refused whole, never searched truncated
        [sys.executable, "-m", "pipeline", "search", "bees make honey " * 100],
        env=cli_env, capture_output=True, text=True, timeout=600, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert too_long.returncode == 2, too_long.stderr[-4000:]
    last_line = too_long.stderr.splitlines()[-1]
    assert last_line.startswith("error: input 0 has ") and "refused, not truncated" in last_line, last_line
    _check_the_api(cli_env)

    # Re-running the demo re-delivers the corpus: the replicas do not change.
    again = _cli(cli_env, "demo")
    assert "24 events -> 24 documents" in again
    assert _cli(cli_env, "status").count("rows") == status.count("rows")
    assert [line for line in _cli(cli_env, "status").splitlines() if "rows" in line] == list(rows.values())

    down = _cli(cli_env, "down")
    lines = down.splitlines()
    assert len(lines) == 3 and all(line.split()[2] == "stopped:" for line in lines), down
