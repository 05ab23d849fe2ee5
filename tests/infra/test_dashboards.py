"""infra/'s Grafana dashboard and Prometheus config fit what the code emits and where Ray exports it."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from pipeline.ingest import metrics as ingest_metrics
from pipeline.milvus import metrics as milvus_metrics
from workers import metrics as worker_metrics

INFRA = Path(__file__).resolve().parents[2] / "infra"
SPECS = (*worker_metrics.SPECS, *ingest_metrics.SPECS, *milvus_metrics.SPECS)


def _queries() -> list[str]:
    path = INFRA / "grafana" / "dashboards" / "embedstream.json"
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_query_names_only_metrics_the_code_emits() -> None:
    emitted = {name for spec in SPECS for name in spec.exported_names()}
    for query in _queries():
        named = set(re.findall(r"\bray_ingest_\w+", query))
        assert named, f"query names no ingest metric: {query}"
        assert named <= emitted, f"{query} names {sorted(named - emitted)}, which nothing emits"
        assert query.count("(") == query.count(")"), query


def test_every_metric_the_code_emits_has_a_panel() -> None:
    queried = {name for query in _queries() for name in re.findall(r"\bray_ingest_\w+", query)}
    for spec in SPECS:
        assert queried & set(spec.exported_names()), f"no panel shows {spec.name}"


def test_queries_use_only_tags_the_metrics_have() -> None:
    tags_of = {name: set(spec.tag_keys) | {"le"} for spec in SPECS for name in spec.exported_names()}
    for query in _queries():
        for name in re.findall(r"\bray_ingest_\w+", query):
            for matcher in re.findall(rf"{name}\{{([^}}]*)\}}", query):
                used = {m.split("=")[0].strip() for m in matcher.split(",")}
                assert used <= tags_of[name], query
        for grouping in re.findall(r"by \(([^)]*)\)", query):
            used = {tag.strip() for tag in grouping.split(",")}
            names = set(re.findall(r"\bray_ingest_\w+", query))
            assert all(used <= tags_of[name] for name in names), query


def test_prometheus_reads_rays_service_discovery_file() -> None:
    config = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["file_sd_configs"][0]["files"] == ["/tmp/ray/prom_metrics_service_discovery.json"]


def test_grafana_provisioning_points_at_the_dashboards_and_prometheus() -> None:
    provisioning = INFRA / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http://")
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "embedstream.yml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"].startswith("/")
