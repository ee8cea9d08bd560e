"""deploy/kserve: the ServingRuntime and InferenceService use only fields KServe's CRDs declare (kserve_crd),
agree with each other as KServe's controller matches them, and run hotwire the way it is served: the runtime's
container is a valid core/v1 container (kubernetes-validate, inside a Pod) whose arguments hotwire accepts,
reading the repository where KServe mounts the model."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kserve_crd
import pytest
import yaml
from kserve_crd import INFERENCE_SERVICE, SERVING_RUNTIME, Node
from test_manifests import IMAGE_UID, ROOT, load, serve_config, validate

KSERVE = ROOT / "deploy" / "kserve"


def document(name: str) -> dict[str, Any]:
    (found,) = load(KSERVE / name)
    return found


def schema_errors(value: Any, node: Node, path: str = "") -> list[str]:
    """Every key `value` has that `node` does not allow, every required one it lacks, every wrong type."""
    if not isinstance(value, dict):
        return [f"{path or '.'}: expected an object, got {type(value).__name__}"]
    errors = [f"{path}.{key}: not a field of the CRD" for key in sorted(value.keys() - node.allowed)]
    errors += [f"{path}.{key}: required, missing" for key in sorted(node.required - value.keys())]
    for key, expected in node.types.items():
        # bool is an int in Python; the CRD's integers are not booleans
        wrong_bool = expected is int and isinstance(value.get(key), bool)
        if key in value and (not isinstance(value[key], expected) or wrong_bool):
            errors.append(f"{path}.{key}: expected {expected}, got {value[key]!r}")
    for key, child in node.children.items():
        if key not in value:
            continue
        items = value[key] if isinstance(value[key], list) else [value[key]]
        for i, item in enumerate(items):
            errors += schema_errors(
                item, child, f"{path}.{key}" + (f"[{i}]" if isinstance(value[key], list) else "")
            )
    return errors


def runtime_errors(runtime: dict[str, Any]) -> list[str]:
    """The CRD's fields, and the constraints its schema or KServe's controller add to them."""
    errors = schema_errors(runtime, SERVING_RUNTIME)
    spec = runtime.get("spec", {})
    for i, entry in enumerate(spec.get("supportedModelFormats", [])):
        if isinstance(entry.get("priority"), int) and entry["priority"] < 1:
            errors.append(f".spec.supportedModelFormats[{i}].priority: minimum 1, got {entry['priority']}")
    for version in spec.get("protocolVersions", []):
        if version not in kserve_crd.PROTOCOL_VERSIONS:
            errors.append(f".spec.protocolVersions: {version!r} is none of {kserve_crd.PROTOCOL_VERSIONS}")
    if kserve_crd.PREDICTOR_CONTAINER not in [c.get("name") for c in spec.get("containers", [])]:
        errors.append(f".spec.containers: none is named {kserve_crd.PREDICTOR_CONTAINER}")
    return errors


def predictor_container(runtime: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in runtime["spec"]["containers"] if c["name"] == kserve_crd.PREDICTOR_CONTAINER)


def test_both_resources_use_only_the_fields_kserves_crds_declare():
    runtime, service = document("servingruntime.yaml"), document("inferenceservice.yaml")
    assert runtime["apiVersion"] == kserve_crd.API_VERSIONS[runtime["kind"]]
    assert service["apiVersion"] == kserve_crd.API_VERSIONS[service["kind"]]
    assert runtime_errors(runtime) == []
    assert schema_errors(service, INFERENCE_SERVICE) == []


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda r: r["spec"].update(supportedModelFormat=[]), ".spec.supportedModelFormat: not a field"),
        (lambda r: r["spec"].pop("containers"), ".spec.containers: required, missing"),
        (lambda r: r["spec"]["supportedModelFormats"][0].update(priority=0), "priority: minimum 1, got 0"),
        (lambda r: r["spec"]["supportedModelFormats"][0].update(autoSelect="yes"), "autoSelect: expected"),
        (lambda r: r["spec"]["protocolVersions"].append("grpc-v3"), "'grpc-v3' is none of"),
        (lambda r: predictor_container(r).update(name="hotwire"), "none is named kserve-container"),
        (lambda r: r["spec"]["containers"][0]["ports"][0].pop("containerPort"), "containerPort: required"),
    ],
)
def test_the_check_finds_a_field_kserve_would_prune_or_reject(change, error):
    runtime = copy.deepcopy(document("servingruntime.yaml"))
    change(runtime)
    assert any(error in found for found in runtime_errors(runtime)), runtime_errors(runtime)


def test_the_inference_service_selects_this_runtime_for_its_format_and_protocol():
    """As KServe's controller matches them: the runtime named, its format (name and version) listed, the
    protocol among the runtime's, a storage URI it knows how to fetch."""
    runtime, service = document("servingruntime.yaml"), document("inferenceservice.yaml")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"] in [
        {"name": f["name"], "version": f["version"]} for f in runtime["spec"]["supportedModelFormats"]
    ]
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert {"grpc-v2", "v2"} <= set(runtime["spec"]["protocolVersions"])
    assert model["storageUri"].startswith(kserve_crd.STORAGE_URI_SCHEMES)
    if model["storageUri"].startswith("pvc://"):  # the claim deploy/kubernetes defines
        (claim,) = load(ROOT / "deploy" / "kubernetes" / "models-pvc.yaml")
        assert model["storageUri"].removeprefix("pvc://").split("/")[0] == claim["metadata"]["name"]


def test_the_runtime_container_is_a_valid_pod_container_serving_what_kserve_mounts(tmp_path: Path):
    runtime, service = document("servingruntime.yaml"), document("inferenceservice.yaml")
    container = predictor_container(runtime)
    # The pod KServe builds: the runtime's container and volumes, and the storage initializer's volume
    # mounted at /mnt/models.
    pod_container = copy.deepcopy(container)
    pod_container["volumeMounts"].append(
        {"name": "kserve-provision-location", "mountPath": kserve_crd.MODEL_MOUNT_PATH}
    )
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "hotwire-predictor", "annotations": runtime["spec"]["annotations"]},
        "spec": {
            "containers": [pod_container],
            "volumes": [*runtime["spec"]["volumes"], {"name": "kserve-provision-location", "emptyDir": {}}],
            "terminationGracePeriodSeconds": service["spec"]["predictor"]["terminationGracePeriodSeconds"],
        },
    }
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(pod))
    result = validate(path)
    assert result.returncode == 0, result.stdout + result.stderr

    config = serve_config(container)
    assert str(config.model_repository) == kserve_crd.MODEL_MOUNT_PATH
    (port,) = container["ports"]
    assert "h2c" in port["name"] and port["containerPort"] == config.grpc_port  # KServe routes it as gRPC
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == config.grpc_port  # grpc.health.v1
    assert int(runtime["spec"]["annotations"]["prometheus.io/port"]) == config.metrics_port
    assert service["spec"]["predictor"]["terminationGracePeriodSeconds"] > config.shutdown_grace_s
    security = container["securityContext"]
    assert security["runAsUser"] == IMAGE_UID and security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["TMPDIR"] in {m["mountPath"] for m in container["volumeMounts"]}
