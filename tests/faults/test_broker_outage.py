"""Scenario 4: the broker unreachable for 15 s mid-stream, through a TCP proxy that is cut.

The test's own Tansu broker advertises the proxy's address, so every Kafka connection of the
worker (fetches, heartbeats, commits, dead-letter sends) and of the test goes through the
proxy.  Once the worker has committed progress, the proxy aborts every connection and refuses
new ones for 15 s, then comes back.  The worker must stay up, reconnect by itself and finish
the stream (produced half before the cut, half after): every replica and the DLQ exact.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import task_problem
from helpers.kafka_io import CommitWatcher, assert_all_committed, produce, read_topic
from helpers.oracle import compare, read_replicas
from streams import mixed_stream
from tcp_proxy import TcpProxy

from pipeline.ingest.kafka import ensure_topics
from pipeline.milvus.sink import MilvusSink
from pipeline.ops import processes, services
from pipeline.ops.processes import ManagedProcess
from pipeline.runtime.assemble import build_runtime
from pipeline.settings import Settings

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CUT_S = 15.0


async def test_broker_cut_for_15s_then_the_worker_finishes(
    make_settings: Callable[..., Settings],
    open_sink: Callable[[Settings], MilvusSink],
    milvus_lite_uri: str,
    ray_session: None,
    tmp_path: Path,
) -> None:
    broker_port, proxy_port = processes.free_port(), processes.free_port()
    proxy = TcpProxy((processes.HOST, proxy_port), (processes.HOST, broker_port))
    await proxy.start()
    broker: ManagedProcess | None = None
    try:
        broker = await asyncio.to_thread(services.start_kafka, tmp_path / "kafka", broker_port, proxy_port)
        assert broker.address == proxy.address
        settings = make_settings(milvus_lite_uri, bootstrap=proxy.address)
        kafka, topic = settings.kafka, settings.kafka.topic
        oracle = mixed_stream(seed=4004, events=1600)
        half = len(oracle.records) // 2
        await ensure_topics(kafka)
        await produce(kafka, oracle.records[:half])
        runtime = await build_runtime(settings)
        stop = asyncio.Event()
        try:
            worker = runtime.new_consumer()
            running = asyncio.create_task(worker.run(stop=stop))
            alive = task_problem(running)
            async with CommitWatcher(kafka) as watcher:
                before = await watcher.wait_beyond(0, alive, 240)
            aborted = await proxy.cut()
            cut_at = time.monotonic()
            while time.monotonic() - cut_at < CUT_S:
                assert alive() is None
                await asyncio.sleep(0.5)
            await proxy.restore()
            restored_at = time.monotonic()
            await produce(kafka, oracle.records[half:])
            async with CommitWatcher(kafka) as watcher:
                while (done := await watcher.total()) < len(oracle.records):
                    assert alive() is None and time.monotonic() - restored_at < 300, (done, alive())
                    await asyncio.sleep(0.5)
            finish_s = time.monotonic() - restored_at
            stop.set()
            stats = await asyncio.wait_for(running, 60)
        finally:
            stop.set()
            runtime.close()
        await assert_all_committed(kafka)
        replicas = await asyncio.to_thread(read_replicas, open_sink(settings))
        verdict = compare(oracle, replicas, await read_topic(kafka, kafka.dlq_topic), topic)
    finally:
        await proxy.close()
        if broker is not None:
            broker.stop()
    print(
        f"\nbroker cut {CUT_S:.0f}s after {before} of {len(oracle.records)} events committed "
        f"({aborted} connections aborted); all committed {finish_s:.1f}s after the restore; "
        f"{stats.events} events handled (re-deliveries included); {verdict.summary()}"
    )
    assert aborted > 0 and before < len(oracle.records)
    assert verdict.exact, verdict.summary()
