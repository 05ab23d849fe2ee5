"""Reading Ray's Prometheus endpoints the way a Prometheus server would: every alive node's metrics port."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import ray
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Mapping[str, str]
    value: float


def metrics_endpoints() -> list[str]:
    """``http://host:port/metrics`` of every alive node of the cluster this process joined."""
    return [
        f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
        for node in ray.nodes()
        if node["Alive"]
    ]


def scrape(endpoints: list[str]) -> list[Sample]:
    """Every ``ray_ingest_*`` sample of ``endpoints``."""
    samples: list[Sample] = []
    for url in endpoints:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            samples.extend(
                Sample(s.name, s.labels, s.value) for s in family.samples if s.name.startswith("ray_ingest_")
            )
    return samples


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(
        s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def series(samples: list[Sample], name: str, **labels: str) -> list[Sample]:
    return [s for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]


async def scrape_until(
    check: Callable[[list[Sample]], str | None], timeout_s: float = 90.0
) -> tuple[list[Sample], str | None]:
    """Scrape every few seconds until ``check`` returns None (Ray exports every ~5-10 s).

    Returns the last scrape and what ``check`` said about it (None when it passed).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        samples = await asyncio.to_thread(scrape, metrics_endpoints())
        problem = check(samples)
        if problem is None or time.monotonic() > deadline:
            return samples, problem
        await asyncio.sleep(2.0)
