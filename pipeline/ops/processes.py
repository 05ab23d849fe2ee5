"""Detached service processes that a later Python process can find, probe and stop; local ports.

A :class:`ManagedProcess` runs in a session and process group of its own, so it outlives the
process that started it.  It writes ``{name}.log`` and ``{name}.pid`` (pid and kernel start
time, so a recycled pid is never signalled), and stopping it signals only its recorded process
group.  Linux only: liveness is read from ``/proc``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from workers.errors import PipelineError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


class StackError(PipelineError):
    """A local service could not be started or stopped; the message carries its log tail."""


class ProcStat(NamedTuple):
    """The fields of ``/proc/{pid}/stat`` that liveness and group membership are judged by."""

    comm: str
    state: str
    pgrp: int
    start: int  # clock ticks after boot


def _stat(pid: int) -> ProcStat | None:
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
    return ProcStat(comm, rest[0], int(rest[2]), int(rest[19]))


def group_members(pgid: int) -> list[tuple[int, ProcStat]]:
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
        members = group_members(pgid) if leader is None or leader.start == record["start"] else []
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
        while self.pid() is not None or group_members(pgid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True


# Below Linux's ephemeral range (32768-60999): a port handed out here cannot be taken by the
# source port of some outgoing connection between our check and the service's bind.
_FREE_PORT_RANGE = (20000, 32767)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing is bound to right now, outside the ephemeral range."""
    for _ in range(200):
        port = random.randint(*_FREE_PORT_RANGE)
        with socket.socket() as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return port
    raise StackError(f"no free TCP port in {_FREE_PORT_RANGE[0]}-{_FREE_PORT_RANGE[1]}")


def accepts(address: str) -> bool:
    """Something listens on ``host:port`` (checked before a client library gets to log failures)."""
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def require_free(port: int, what: str) -> None:
    """Raise StackError when another process listens on ``HOST:port`` (``what`` names it)."""
    # A listener, not a bind test: sockets a killed server left in TIME_WAIT/FIN_WAIT must not count.
    if accepts(f"{HOST}:{port}"):
        raise StackError(f"port {port} ({what}) is in use by another process; free it or pick another")


def cli_flags(**options: object) -> list[str]:
    """``--flag value`` pairs from keyword arguments (``_`` becomes ``-``; None values are left out)."""
    return [arg for k, v in options.items() if v is not None for arg in (f"--{k.replace('_', '-')}", str(v))]


def console_script(name: str) -> str:
    """A console script of this Python environment (also when it is not on PATH)."""
    found = Path(sys.executable).parent / name
    path = str(found) if found.exists() else shutil.which(name)
    if path is None:
        raise StackError(f"{name} is not installed; install the 'local' extra: pip install -e '.[local]'")
    return path
