"""Milvus fixtures of the sink tests: outage tests start, hang and restart a milvus-lite server of their
own (``milvus_uri``, each session server in turn, is in tests/conftest.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path

import pytest

from pipeline.milvus.connection import open_client
from pipeline.ops import processes

BIN = Path(sys.executable).parent
LITE_START_S = 60.0


def wait_until_serving(uri: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float) -> None:
    """Block until ``uri`` answers a collection listing; fail with the log if the process dies."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            client = open_client(uri, timeout=2.0)
            try:
                client.list_collections(timeout=2.0)
                return
            finally:
                client.close()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    """Stop ``proc`` (started with start_new_session) and everything in its process group."""
    if proc.poll() is None:
        proc.send_signal(sig)
        with suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=20)
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children the wrapper did not stop
    proc.wait()


@contextmanager
def lite_server(data_dir: Path, port: int | None = None) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A milvus-lite gRPC server on ``port`` (default: a free one); yields its URI and process."""
    port = port or processes.free_port()
    log = data_dir.parent / f"{data_dir.name}.log"
    argv = [str(BIN / "milvus-lite"), "server", "--data-dir", str(data_dir), "--host", "127.0.0.1"]
    with log.open("ab") as out:
        proc = subprocess.Popen([*argv, "--port", str(port)], stdout=out, stderr=out, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(uri, proc, log, LITE_START_S)
        yield uri, proc
    finally:
        stop(proc)


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    return processes.free_port()


@pytest.fixture
def start_lite() -> Callable[[Path, int], AbstractContextManager[tuple[str, subprocess.Popen[bytes]]]]:
    """:func:`lite_server`, for tests that stop, hang or restart their own server."""
    return lite_server
