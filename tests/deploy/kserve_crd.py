"""The fields of KServe's ServingRuntime and InferenceService CRDs that the manifests in deploy/kserve use,
as KServe v0.20.0 publishes them (github.com/kserve/kserve at aaac4e294dae, config/crd/full/
serving.kserve.io_servingruntimes.yaml and serving.kserve.io_inferenceservices.yaml, openAPIV3Schema), and
the controller's constants (pkg/constants/constants.go). kubernetes-validate has no schemas for KServe's
resources; the full CRDs prune or, under strict field validation, reject an unknown field, so
tests/deploy/test_kserve.py checks every key against these lists. Core/v1 objects inside (a container's
probes, resources, security context; volumes) are checked by kubernetes-validate instead, inside a Pod."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Node:
    """An object in a CRD's schema: the fields it allows, those it requires, those described further."""

    allowed: frozenset[str]
    required: frozenset[str] = frozenset()
    children: dict[str, Node] = field(default_factory=dict)  # a list field's entry is described the same way
    types: dict[str, type | tuple[type, ...]] = field(default_factory=dict)


# Everything a core/v1 Container has, as KServe's CRDs inline it.
CONTAINER_FIELDS = frozenset(
    "args command env envFrom image imagePullPolicy lifecycle livenessProbe name ports readinessProbe "
    "resizePolicy resources restartPolicy restartPolicyRules securityContext startupProbe stdin "
    "stdinOnce terminationMessagePath terminationMessagePolicy tty volumeDevices volumeMounts "
    "workingDir".split()
)
METADATA = Node(frozenset({"name", "namespace", "labels", "annotations"}), frozenset({"name"}))

SERVING_RUNTIME = Node(
    frozenset({"apiVersion", "kind", "metadata", "spec"}),
    frozenset({"apiVersion", "kind", "metadata", "spec"}),
    {
        "metadata": METADATA,
        "spec": Node(
            frozenset(
                "affinity annotations builtInAdapter containers disabled grpcDataEndpoint "
                "grpcEndpoint hostIPC httpDataEndpoint imagePullSecrets labels multiModel "
                "nodeSelector protocolVersions replicas resourceClaims schedulerName storageHelper "
                "supportedModelFormats tolerations volumes workerSpec".split()
            ),
            frozenset({"containers"}),
            {
                "supportedModelFormats": Node(
                    frozenset({"autoSelect", "name", "priority", "version"}),
                    frozenset({"name"}),
                    types={"autoSelect": bool, "name": str, "priority": int, "version": str},
                ),
                "containers": Node(
                    CONTAINER_FIELDS,
                    frozenset({"name"}),
                    {
                        "ports": Node(
                            frozenset({"containerPort", "hostIP", "hostPort", "name", "protocol"}),
                            frozenset({"containerPort"}),
                            types={"containerPort": int, "name": str},
                        )
                    },
                ),
            },
            types={"protocolVersions": list, "annotations": dict, "multiModel": bool, "disabled": bool},
        ),
    },
)

INFERENCE_SERVICE = Node(
    frozenset({"apiVersion", "kind", "metadata", "spec"}),
    frozenset({"apiVersion", "kind", "metadata", "spec"}),
    {
        "metadata": METADATA,
        "spec": Node(
            frozenset({"canary", "explainer", "predictor", "transformer"}),
            frozenset({"predictor"}),
            {
                "predictor": Node(
                    frozenset(
                        "activeDeadlineSeconds affinity annotations autoScaling "
                        "automountServiceAccountToken batcher canaryTrafficPercent "
                        "containerConcurrency containers deploymentStrategy dnsConfig dnsPolicy "
                        "enableServiceLinks hostAliases hostIPC hostNetwork hostPID hostUsers "
                        "hostname hostnameOverride huggingface imagePullSecrets initContainers labels "
                        "lightgbm logger maxReplicas minReplicas model name nodeName nodeSelector "
                        "onnx os overhead paddle pmml preemptionPolicy priority priorityClassName "
                        "pytorch readinessGates resourceClaims resources restartPolicy "
                        "runtimeClassName scaleMetric scaleMetricType scaleTarget schedulerName "
                        "schedulingGates securityContext serviceAccount serviceAccountName "
                        "setHostnameAsFQDN shareProcessNamespace sklearn storageContainerName "
                        "storageUris subdomain tensorflow terminationGracePeriodSeconds timeout "
                        "tolerations topologySpreadConstraints triton volumes workerSpec xgboost".split()
                    ),
                    children={
                        "model": Node(
                            CONTAINER_FIELDS
                            | {"confidential", "modelFormat", "protocolVersion", "runtime", "runtimeVersion"}
                            | {"storage", "storageUri"},
                            children={
                                "modelFormat": Node(
                                    frozenset({"name", "version"}),
                                    frozenset({"name"}),
                                    types={"name": str, "version": str},
                                )
                            },
                            types={"runtime": str, "storageUri": str, "protocolVersion": str},
                        )
                    },
                    types={"minReplicas": int, "maxReplicas": int, "terminationGracePeriodSeconds": int},
                )
            },
        ),
    },
)

API_VERSIONS = {
    "ServingRuntime": "serving.kserve.io/v1alpha1",
    "InferenceService": "serving.kserve.io/v1beta1",
}
PROTOCOL_VERSIONS = ("v1", "v2", "grpc-v1", "grpc-v2")  # constants.InferenceServiceProtocol
PREDICTOR_CONTAINER = (
    "kserve-container"  # constants.InferenceServiceContainerName: the one KServe merges into
)
MODEL_MOUNT_PATH = "/mnt/models"  # constants.DefaultModelLocalMountPath: where storageUri lands
STORAGE_URI_SCHEMES = ("pvc://", "s3://", "gs://", "oci://", "https://", "hdfs://", "webhdfs://")
