"""deploy/kubernetes: the manifests pass kubernetes-validate (strict, against KUBERNETES_VERSION) and agree
with the image and with hotwire itself: user, ports, probes, arguments, grace period, the HPA's metric."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hotwire.server.config import ServerConfig, add_serve_arguments, bundled_repository, server_config

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.33.0"  # the version the manifests are validated against (README, deploy section)
IMAGE_UID = 10001  # Dockerfile.cpu's and Dockerfile.gpu's USER


def load(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


def resource(kind: str) -> dict[str, Any]:
    matches = [d for path in sorted(KUBERNETES.glob("*.yaml")) for d in load(path) if d["kind"] == kind]
    assert len(matches) == 1, f"{len(matches)} {kind} manifests in deploy/kubernetes"
    return matches[0]


def validator() -> str:
    found = shutil.which("kubernetes-validate") or str(Path(sys.executable).parent / "kubernetes-validate")
    if not Path(found).exists():
        pytest.fail("kubernetes-validate is not installed: it comes with the test extra")
    return found


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [validator(), "--kubernetes-version", KUBERNETES_VERSION, "--strict", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_every_manifest_is_valid_kubernetes_in_strict_mode():
    paths = sorted(KUBERNETES.glob("*.yaml"))
    assert {p.name for p in paths} >= {
        "deployment.yaml",
        "deployment-mig.yaml",
        "service.yaml",
        "hpa.yaml",
        "pdb.yaml",
        "prometheus-adapter-rules.yaml",
    }
    result = validate(*paths)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == sum(len(load(p)) for p in paths), result.stdout


def test_strict_validation_does_reject_an_unknown_field(tmp_path):
    (deployment,) = load(KUBERNETES / "deployment.yaml")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"grpc": {"port": 8001}}
    broken = tmp_path / "deployment.yaml"
    broken.write_text(yaml.safe_dump(deployment))
    result = validate(broken)
    assert result.returncode != 0 and "readinesProbe" in result.stdout + result.stderr


def deployments() -> list[dict[str, Any]]:
    return [d for name in ("deployment.yaml", "deployment-mig.yaml") for d in load(KUBERNETES / name)]


def serve_config(container: dict[str, Any]) -> ServerConfig:
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    return server_config(parser.parse_args(container.get("args", [])), environ={})


@pytest.mark.parametrize("index", [0, 1], ids=["cpu", "mig"])
def test_the_pod_runs_the_images_user_read_only_with_writable_volumes_where_hotwire_writes(index):
    pod = deployments()[index]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsUser"] == IMAGE_UID and pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"] for v in pod["volumes"]}
    config = serve_config(container)
    # uploads go under TMPDIR, drift references next to the model: both on writable volumes
    assert str(config.model_repository) in mounts and mounts[str(config.model_repository)] in volumes
    env = {e["name"]: e["value"] for e in container.get("env", [])}
    assert env.get("TMPDIR") in mounts
    assert not any(m.get("readOnly") for m in container["volumeMounts"])
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()


@pytest.mark.parametrize("index", [0, 1], ids=["cpu", "mig"])
def test_ports_probes_grace_and_scrape_annotations_match_hotwire_serve(index):
    deployment = deployments()[index]
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    config = serve_config(container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": config.http_port, "grpc": config.grpc_port, "metrics": config.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == config.grpc_port  # grpc.health.v1
    assert template["spec"]["terminationGracePeriodSeconds"] > config.shutdown_grace_s
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == config.metrics_port
    labels = template["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_service_and_disruption_budget_select_the_pods_and_name_the_grpc_port_h2c():
    labels = load(KUBERNETES / "deployment.yaml")[0]["spec"]["template"]["metadata"]["labels"]
    service = resource("Service")
    assert service["spec"]["selector"].items() <= labels.items()
    grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc_port["appProtocol"] == "kubernetes.io/h2c" and grpc_port["targetPort"] == "grpc"
    budget = resource("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["minAvailable"] < load(KUBERNETES / "deployment.yaml")[0]["spec"]["replicas"]


def test_the_mig_variant_asks_for_a_mig_slice_and_serves_on_its_only_device():
    (container,) = load(KUBERNETES / "deployment-mig.yaml")[0]["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["limits"] == {
        **container["resources"]["limits"],
        "nvidia.com/mig-1g.10gb": 1,
    }
    assert container["image"].endswith(":gpu")


def test_the_autoscaler_scales_on_a_gauge_hotwire_exports_through_the_adapters_rule(running_server):
    hpa = resource("HorizontalPodAutoscaler")
    assert (
        hpa["spec"]["scaleTargetRef"]["name"] == load(KUBERNETES / "deployment.yaml")[0]["metadata"]["name"]
    )
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    (config_map,) = load(KUBERNETES / "prometheus-adapter-rules.yaml")
    (rule,) = yaml.safe_load(config_map["data"]["config.yaml"])["rules"]
    assert rule["name"]["as"] == name and rule["seriesQuery"].startswith(name + "{")
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    # the metric is one hotwire serves, as a gauge (a queue depth, not a counter), on the real server
    server = running_server(bundled_repository(), metrics_port=0)
    body = urllib.request.urlopen(f"http://127.0.0.1:{server.app.metrics_port}/metrics", timeout=10).read()
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families[name].type == "gauge" and families[name].samples
