"""The local stack: `up` / `status` / `down` on real processes, and the process handling under it."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from pymilvus import DataType, MilvusClient

from pipeline.milvus.connection import open_client
from pipeline.ops import processes, services, stack
from pipeline.settings import Settings, StackSettings


def _settings(data_dir: Path) -> Settings:
    free = processes.free_port
    return Settings(
        stack=StackSettings(
            data_dir=data_dir, kafka_port=free(), milvus_port=free(), ray_port=free(), dashboard_port=free()
        )
    )


def _nothing_listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def _live_group_members(pgid: int) -> list[int]:
    members = []
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, pgrp = stat_file.read_text().rsplit(")", 1)[1].split()[:3]
        except FileNotFoundError:
            continue  # exited while we looked
        if state != "Z" and int(pgrp) == pgid:
            members.append(int(stat_file.parent.name))
    return members


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_up_status_up_again_down(tmp_path: Path) -> None:
    # tmp_path is long enough that Ray's sockets need the short temp-dir link.
    settings = _settings(tmp_path / "a-data-folder-with-a-rather-long-name")
    data = settings.stack.data_dir
    names = ["kafka", "milvus", "ray"]
    try:
        started = stack.up(settings)
        assert [s.name for s in started] == names
        assert all(s.running and s.pid and s.detail.startswith("started in") for s in started)
        assert stack.ray_head_running(settings)

        current = stack.status(settings)
        assert [(s.name, s.running, s.pid, s.detail) for s in current] == [
            (s.name, True, s.pid, "ready") for s in started
        ]
        assert [s.address for s in current] == [
            f"127.0.0.1:{settings.stack.kafka_port}",
            f"127.0.0.1:{settings.stack.milvus_port}",
            stack.ray_address(settings),
        ]

        token = data.resolve() / "ray" / "auth_token"
        assert stack.ray_client_env(settings) == {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        assert stat.S_IMODE(token.stat().st_mode) == 0o600 and re.fullmatch(
            r"[0-9a-f]{64}", token.read_text()
        )
        assert list((data / "ray" / "tmp").glob("session_*/logs/gcs_server.out")), (
            "Ray state is not in the data dir"
        )
        assert (data / "milvus").is_dir() and (data / "kafka.log").is_file()
        # What a user is told to log in to the dashboard with is the token the head accepts.
        assert str(token) in stack.dashboard_login(settings)
        assert stack.dashboard_token(settings) == token.read_text().strip()
        dashboard = f"http://127.0.0.1:{settings.stack.dashboard_port}/api/v0/nodes"
        login = {"Authorization": f"Bearer {stack.dashboard_token(settings)}"}
        with urllib.request.urlopen(urllib.request.Request(dashboard, headers=login), timeout=10) as reply:
            assert reply.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(dashboard, headers={"Authorization": "Bearer x"}))
        assert refused.value.code in (401, 403)

        again = stack.up(settings)
        assert [(s.pid, s.detail.split(";")[0]) for s in again] == [
            (s.pid, "already running") for s in started
        ]
    finally:
        stopped = stack.down(settings)
    assert [(s.name, s.running) for s in stopped] == [(n, False) for n in names]
    assert all(s.detail.startswith("stopped") for s in stopped)
    assert [(s.running, s.detail) for s in stack.status(settings)] == [(False, "not running")] * 3
    assert not stack.ray_head_running(settings)
    ports = settings.stack
    assert all(
        _nothing_listens(p)
        for p in (ports.kafka_port, ports.milvus_port, ports.ray_port, ports.dashboard_port)
    )
    assert [s.detail for s in stack.down(settings)] == ["not running"] * 3


def test_up_refuses_a_port_taken_by_another_process(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with socket.socket() as squatter:  # the last service's port: nothing may start before the check
        squatter.bind(("127.0.0.1", settings.stack.dashboard_port))
        squatter.listen()
        with pytest.raises(
            stack.StackError, match=rf"port {settings.stack.dashboard_port} \(ray dashboard\) is in use"
        ):
            stack.up(settings)
    assert not list(tmp_path.glob("*.pid"))
    assert [s.running for s in stack.status(settings)] == [False] * 3


def test_a_service_that_dies_at_startup_raises_with_its_log_tail(tmp_path: Path) -> None:
    proc = processes.ManagedProcess("broken", tmp_path, "127.0.0.1:1")
    proc.start(["sh", "-c", "echo 'fatal: cannot open the data folder' >&2; exit 3"])
    with pytest.raises(
        processes.StackError, match=r"(?s)broken exited during startup.*cannot open the data folder"
    ):
        proc.wait_ready(lambda: False, timeout_s=30)
    assert proc.pid() is None and not proc.pid_path.exists()


def test_stop_kills_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    proc = processes.ManagedProcess("stubborn", tmp_path, "-")
    # The trap is inherited by the background child: the whole group ignores SIGTERM.
    proc.start(["sh", "-c", "trap '' TERM; sleep 300 & echo ready; wait"])
    proc.wait_ready(lambda: "ready" in proc.log_path.read_text(), timeout_s=30)
    pid = proc.pid()
    assert pid is not None
    assert proc.stop(timeout_s=0.5)
    assert proc.pid() is None
    assert _live_group_members(pid) == [], "a member of the group survived"
    assert not proc.stop()


def test_a_stale_pid_file_never_signals_an_unrelated_process(tmp_path: Path) -> None:
    proc = processes.ManagedProcess("kafka", tmp_path, "127.0.0.1:9092")
    # Our own pid with another start time: what a recycled pid looks like.
    proc.pid_path.write_text(json.dumps({"pid": os.getpid(), "start": 1, "address": "127.0.0.1:9092"}))
    assert proc.pid() is None
    assert not proc.stop()
    assert not proc.pid_path.exists()


def test_milvus_lite_keeps_its_data_across_a_restart(tmp_path: Path) -> None:
    port = processes.free_port()
    server = services.start_milvus_lite(tmp_path, port)
    try:
        client = open_client(f"http://{server.address}", timeout=30)
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("pk", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("embedding", DataType.FLOAT_VECTOR, dim=2)
        index = client.prepare_index_params()
        index.add_index("embedding", index_type="FLAT", metric_type="COSINE")
        client.create_collection("kept", schema=schema, index_params=index)
        client.insert("kept", [{"pk": "a", "embedding": [1.0, 0.0]}, {"pk": "b", "embedding": [0.0, 1.0]}])
        client.close()
    finally:
        assert server.stop()
    server = services.start_milvus_lite(tmp_path, port)
    try:
        client = open_client(f"http://{server.address}", timeout=30)
        client.load_collection("kept")
        rows = client.query("kept", filter="", output_fields=["pk"], limit=10)
        assert sorted(r["pk"] for r in rows) == ["a", "b"]
        client.close()
    finally:
        server.stop()
