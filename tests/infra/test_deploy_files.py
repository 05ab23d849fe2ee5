"""infra/'s deployment files are valid: compose against the Compose Specification schema, the
KubeRay manifests' pod templates against the Kubernetes schema, and every command they run is one
the CLI accepts.  (Containers cannot run in CI, so this is what can be checked without them.)"""

from __future__ import annotations

import json
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from pipeline.cli import _parser
from pipeline.settings import load_settings

INFRA = Path(__file__).resolve().parents[2] / "infra"
K8S_VERSION = "1.30"


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def _cli_accepts(argv: list[str]) -> None:
    assert argv[:3] == ["python", "-m", "pipeline"], argv
    _parser().parse_args(argv[3:])  # exits (SystemExit) on anything it does not know


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(_yaml(INFRA / "docker-compose.yml"))


def test_compose_file_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads((vendor / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose), key=str)
    assert not errors, [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]


def test_compose_runs_the_whole_stack(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {"kafka", "etcd", "minio", "milvus", "ray-head", "ray-gpu-worker", "ingest-worker"}
    assert expected | {"prometheus", "grafana"} <= set(services)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft
    gpu = services["ray-gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["capabilities"] == ["gpu"]
    for name, service in services.items():
        for dependency in service.get("depends_on", []):
            assert dependency in services, f"{name} depends on unknown {dependency}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (INFRA / source).exists(), f"{name} mounts missing {source}"
            elif not source.startswith("${"):
                assert source in compose["volumes"], f"{name} mounts unknown volume {source}"


def test_compose_worker_command_and_config_are_valid(compose: dict[str, Any]) -> None:
    worker = compose["services"]["ingest-worker"]
    _cli_accepts(worker["command"])
    settings = load_settings(INFRA / "compose.toml")
    assert settings.model.name_or_path.startswith("/models/")


def test_dockerfile_copies_what_exists() -> None:
    for line in (INFRA / "Dockerfile").read_text().splitlines():
        if line.startswith("COPY"):
            source = line.split()[-2]
            assert (INFRA.parent / source).exists(), line


def _pod_templates(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    spec = manifest["spec"]
    if manifest["kind"] == "RayCluster":
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        return [group["template"] for group in groups]
    return [spec["submitterPodTemplate"]]


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_pod_templates_match_the_kubernetes_schema(name: str) -> None:
    manifest = _yaml(INFRA / "k8s" / name)
    assert manifest["apiVersion"] == "ray.io/v1"
    for template in _pod_templates(manifest):
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "template"}, **template}
        pod["metadata"] = {"name": "template", **template.get("metadata", {})}
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


def test_raycluster_has_an_autoscaling_gpu_worker_group() -> None:
    cluster = _yaml(INFRA / "k8s" / "raycluster.yaml")
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["enableInTreeAutoscaling"] is True
    (gpu,) = cluster["spec"]["workerGroupSpecs"]
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    (container,) = gpu["template"]["spec"]["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_rayjob_runs_the_worker_on_the_cluster() -> None:
    job = _yaml(INFRA / "k8s" / "rayjob.yaml")
    cluster = _yaml(INFRA / "k8s" / "raycluster.yaml")
    assert job["kind"] == "RayJob"
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    _cli_accepts(shlex.split(job["spec"]["entrypoint"]))
    yaml.safe_load(job["spec"]["runtimeEnvYAML"])


def test_milvus_helm_values_are_standalone_without_pulsar() -> None:
    values = _yaml(INFRA / "k8s" / "milvus-values.yaml")
    assert values["cluster"]["enabled"] is False
    assert values["pulsar"]["enabled"] is False and values["pulsarv3"]["enabled"] is False
    assert values["minio"]["mode"] == "standalone"
