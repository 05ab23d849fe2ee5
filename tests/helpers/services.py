"""Services the tests need that the local stack does not run: a real Milvus 2.3.5 standalone."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.ops.processes import (
    HOST,
    ManagedProcess,
    cli_flags,
    console_script,
    free_port,
    group_members,
    require_free,
)
from pipeline.ops.stack import milvus_ready
from pipeline.settings import StackSettings

log = logging.getLogger(__name__)

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
    require_free(port, "milvus standalone")
    data_dir.mkdir(parents=True, exist_ok=True)
    etcd, peer = free_port(), free_port()
    etcd_config = data_dir / "embed_etcd.yaml"
    etcd_config.write_text(
        f"listen-client-urls: http://{HOST}:{etcd}\nadvertise-client-urls: http://{HOST}:{etcd}\n"
        f"listen-peer-urls: http://{HOST}:{peer}\ninitial-advertise-peer-urls: http://{HOST}:{peer}\n"
        f"initial-cluster: default=http://{HOST}:{peer}\n"
    )
    ports = {f"{name}_port": free_port() for name in _STANDALONE_PORTS.split()}
    argv = [
        console_script("milvus-server"),
        *cli_flags(data=data_dir, proxy_port=port, etcd_port=etcd, **ports),
    ]
    proc = ManagedProcess("milvus-standalone", data_dir, f"{HOST}:{port}")
    log.info("starting Milvus standalone on %s:%d (data in %s)", HOST, port, data_dir)
    proc.start(argv, env=os.environ | {"ETCD_CONFIG_PATH": str(etcd_config)})
    seen_server = False

    def alive() -> bool:
        nonlocal seen_server
        pid = proc.pid()
        server_up = pid is not None and any(stat.comm == "milvus" for _, stat in group_members(pid))
        seen_server |= server_up
        return server_up or (pid is not None and not seen_server)

    ready = proc.wait_ready(
        lambda: milvus_ready(proc.address),
        timeout_s,
        alive,
        logs=[data_dir / "logs" / "milvus-stdout.log"],  # its [ERROR] lines; stderr holds Go stack dumps
    )
    log.info("milvus standalone ready in %.1f s", ready)
    return proc


@dataclass(frozen=True)
class RayCluster:
    """A Ray head with token authentication.

    A driver process joins with ``ray.init(address=cluster.address)`` once ``env`` is in its
    environment (without ``RAY_AUTH_TOKEN``, which would win over the token file); this test
    process uses :func:`ray_session` instead.
    """

    address: str
    env: dict[str, str]
    dashboard_url: str
    stack: StackSettings  # what it was started with: `python -m pipeline dashboard` finds its token by it


def pipeline_process_env(ray_address: str, ray_env: Mapping[str, str]) -> dict[str, str]:
    """The environment of a ``python -m pipeline`` child process that joins the Ray cluster at
    ``ray_address`` (``ray_env``: :attr:`RayCluster.env`): this process's, without ``RAY_AUTH_TOKEN``
    (it would win over the token file of ``ray_env``), with this checkout first on ``PYTHONPATH``."""
    env = {**os.environ, **ray_env, "PIPELINE_RAY__ADDRESS": ray_address}
    env.pop("RAY_AUTH_TOKEN", None)
    env["PYTHONPATH"] = os.pathsep.join([str(Path.cwd()), env.get("PYTHONPATH", "")])
    return env
