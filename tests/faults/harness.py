"""The worker of a fault test: as a separate process that a test can SIGKILL, or as a task in this one."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from helpers.services import pipeline_process_env


class WorkerProcess:
    """``python -m pipeline --config FILE run`` as a child process, started again after each kill.

    Each start joins the test's Ray cluster in a namespace of its own: the embedder actor of a
    killed worker keeps its name until Ray notices its owner died.
    """

    def __init__(self, config: Path, ray_address: str, ray_env: Mapping[str, str], logs: Path) -> None:
        self._config = config
        self._env = pipeline_process_env(ray_address, ray_env)
        self._logs = logs
        self._logs.mkdir(parents=True, exist_ok=True)
        self.starts = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def start(self, *args: str) -> None:
        self.starts += 1
        self.log_path = self._logs / f"worker-{self.starts}.log"
        env = self._env | {"PIPELINE_RAY__NAMESPACE": f"faults-{uuid.uuid4().hex[:8]}"}
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pipeline", "--config", str(self._config), "run", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def wait_for_log(self, needle: str, timeout_s: float) -> float:
        """Seconds until ``needle`` appears in this start's log; fails if the worker exits first."""
        started = time.monotonic()
        while needle not in self.log():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()[-4000:]}")
            if time.monotonic() - started > timeout_s:
                raise AssertionError(
                    f"no {needle!r} in the worker log after {timeout_s:.0f}s:\n{self.log()[-4000:]}"
                )
            time.sleep(0.1)
        return time.monotonic() - started

    def exited(self) -> str | None:
        """None while the worker runs, else its exit code and log tail."""
        assert self.proc is not None
        if self.proc.poll() is None:
            return None
        return f"worker exited with {self.proc.returncode}:\n{self.log()[-4000:]}"

    def kill(self) -> None:
        """SIGKILL: no drain, no commit, no goodbye to the group."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def wait(self, timeout_s: float) -> int:
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            self.kill()
            raise AssertionError(f"worker did not finish in {timeout_s:.0f}s:\n{self.log()[-4000:]}") from exc

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


def task_problem(task: asyncio.Task[Any]) -> Callable[[], str | None]:
    """For a worker running as ``task`` in this process: None while it runs, else why it stopped (as
    :meth:`WorkerProcess.exited` says it for a worker process)."""

    def problem() -> str | None:
        if not task.done():
            return None
        return f"worker stopped: {task.exception() or task.result()!r}"

    return problem
