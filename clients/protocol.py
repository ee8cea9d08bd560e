"""The protocol's calls other than inference, as requests to build and answers to read, shared by `Client` and
`AsyncClient` (which differ only in how they wait)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hotwire.clients.errors import InvalidInput
from hotwire.clients.tensors import ParameterValue
from hotwire.proto import grpc_service_pb2 as pb

__all__ = [
    "AdminResult",
    "ModelMetadata",
    "RepositoryModel",
    "ServerMetadata",
    "StreamRequest",
    "TensorMetadata",
    "load_request",
    "rollback_request",
    "traffic_request",
]

ROLLBACK_PARAMETER = "hotwire.rollback"
TRAFFIC_PARAMETER = "hotwire.traffic"


@dataclass(frozen=True)
class TensorMetadata:
    name: str
    datatype: str  # "FP32", ...
    shape: tuple[int, ...]  # -1 for a variable dimension (the batch dimension, when the model batches)


@dataclass(frozen=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorMetadata, ...]
    outputs: tuple[TensorMetadata, ...]

    @classmethod
    def from_message(cls, message: pb.ModelMetadataResponse) -> ModelMetadata:
        def tensors(items: Any) -> tuple[TensorMetadata, ...]:
            return tuple(TensorMetadata(t.name, t.datatype, tuple(t.shape)) for t in items)

        return cls(
            message.name,
            tuple(message.versions),
            message.platform,
            tensors(message.inputs),
            tensors(message.outputs),
        )


@dataclass(frozen=True)
class ServerMetadata:
    name: str
    version: str
    extensions: tuple[str, ...]

    @classmethod
    def from_message(cls, message: pb.ServerMetadataResponse) -> ServerMetadata:
        return cls(message.name, message.version, tuple(message.extensions))


@dataclass(frozen=True)
class RepositoryModel:
    """A row of the repository index. hotwire puts a ready version's role in `reason` (stable, canary, shadow,
    standby); Triton puts why a model is unavailable there."""

    name: str
    version: str
    state: str  # READY, LOADING, UNAVAILABLE
    reason: str

    @classmethod
    def rows(cls, message: pb.RepositoryIndexResponse) -> list[RepositoryModel]:
        return [cls(m.name, m.version, m.state, m.reason) for m in message.models]


@dataclass(frozen=True)
class AdminResult:
    """What hotwire reports of a rollback or traffic change (its response trailers)."""

    action: str  # e.g. "rollback:standby"
    version: str  # the version now serving the model's traffic
    elapsed_ms: float

    @classmethod
    def from_trailers(cls, trailers: Any) -> AdminResult:
        values = {key: value for key, value in (trailers or ())}
        try:
            elapsed = float(values.get("hotwire-elapsed-ms", "") or 0.0)
        except ValueError:
            elapsed = 0.0
        return cls(values.get("hotwire-action", ""), values.get("hotwire-version", ""), elapsed)


@dataclass
class StreamRequest:
    """One message of `Client.stream()`; the client gives it an id when it has none, to match its answer."""

    model: str
    inputs: Mapping[str, Any]
    outputs: list[str] | None = None
    version: str = ""
    parameters: dict[str, ParameterValue] = field(default_factory=dict)
    request_id: str = ""


def load_request(
    model: str, config: str | Mapping[str, Any] | None = None, files: Mapping[str, bytes] | None = None
) -> pb.RepositoryModelLoadRequest:
    """RepositoryModelLoad: from the server's repository, or with a config (JSON text or a mapping, Triton's
    JSON form of config.pbtxt) and model files (`{"1/model.onnx": data}`: each path relative to the model's
    directory), as Triton's load API takes them."""
    request = pb.RepositoryModelLoadRequest(model_name=model)
    if config is not None:
        request.parameters["config"].string_param = config if isinstance(config, str) else json.dumps(config)
    for path, data in (files or {}).items():
        if path.startswith("/") or ".." in path.split("/"):
            raise InvalidInput(
                f"file '{path}': give a path relative to the model directory", "INVALID_ARGUMENT"
            )
        request.parameters[f"file:{path}"].bytes_param = data
    return request


def rollback_request(model: str, to: int | None = None) -> pb.RepositoryModelLoadRequest:
    request = pb.RepositoryModelLoadRequest(model_name=model)
    request.parameters[ROLLBACK_PARAMETER].string_param = "" if to is None else str(to)
    return request


def traffic_request(model: str, policy: Mapping[str, Any]) -> pb.RepositoryModelLoadRequest:
    """A traffic policy change: any of stable, canary, canary_weight, sticky_parameter, shadow,
    shadow_fraction, standby (hotwire's RepositoryModelLoad parameter)."""
    allowed = {
        "stable",
        "canary",
        "canary_weight",
        "sticky_parameter",
        "shadow",
        "shadow_fraction",
        "standby",
    }
    unknown = sorted(set(policy) - allowed)
    if unknown or not policy:
        raise InvalidInput(
            f"traffic policy: unknown keys {unknown}; expected some of {sorted(allowed)}"
            if unknown
            else f"traffic policy: nothing to change; give some of {sorted(allowed)}",
            "INVALID_ARGUMENT",
        )
    request = pb.RepositoryModelLoadRequest(model_name=model)
    request.parameters[TRAFFIC_PARAMETER].string_param = json.dumps(dict(policy))
    return request
