"""`Client`: the blocking client for any Open Inference Protocol (KServe V2) gRPC server.

    from hotwire.clients import Client
    with Client("localhost:8001") as client:
        result = client.infer("classifier", {"input": x})
        probabilities = result["probabilities"]

Thread-safe: one client serves every thread of a process. With `multiplex=True` (the default) concurrent
`infer` calls share one ModelStreamInfer stream per channel (multiplex.py); `channels=N` spreads them over N
connections.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from hotwire.clients.channel import SERVICE, ChannelSettings
from hotwire.clients.errors import DeadlineExceeded, InferenceServerError, error_from_rpc
from hotwire.clients.multiplex import RESEND, SyncMultiplexer
from hotwire.clients.protocol import (
    AdminResult,
    ModelMetadata,
    RepositoryModel,
    ServerMetadata,
    StreamRequest,
    load_request,
    rollback_request,
    traffic_request,
)
from hotwire.clients.stream import RequestIds, StreamResponse
from hotwire.clients.tensors import InferResult, ParameterValue, RequestEncoder, ResponseDecoder
from hotwire.proto import grpc_service_pb2 as pb
from hotwire.proto import model_config_pb2

__all__ = ["DEFAULT_TIMEOUT_S", "Client"]

DEFAULT_TIMEOUT_S = 60.0
_HEALTH_NAMES = {value: name for name, value in health_pb2.HealthCheckResponse.ServingStatus.items()}


class _Connection:
    """One channel with its raw-bytes inference methods, its typed stubs and its stream."""

    def __init__(self, settings: ChannelSettings, index: int, decoder: ResponseDecoder) -> None:
        self.channel = settings.sync_channel(index)
        self.model_infer = self.channel.unary_unary(f"/{SERVICE}/ModelInfer")  # bytes in, bytes out
        stream_infer = self.channel.stream_stream(f"/{SERVICE}/ModelStreamInfer")
        metadata = settings.metadata or None
        self.open_stream = lambda requests: stream_infer(requests, metadata=metadata)
        self.multiplexer = SyncMultiplexer(self.open_stream, decoder)

    def unary(self, method: str, request_type: Any, response_type: Any) -> Any:
        return self.channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )


class Client:
    """A blocking client. Every call takes `timeout` (seconds; default: the client's `timeout`) and raises an
    `hotwire.clients.errors.InferenceServerError` subclass on failure.

    url: "host:port" (or grpc://, grpcs:// for TLS with the system's CA roots).
    multiplex: unary-looking `infer` calls over one stream per channel. channels: connections in the pool.
    timeout: the default deadline. tls_ca / tls_cert / tls_key: PEM bytes or paths (TLS, mTLS).
    token: a bearer token. retries: extra attempts of idempotent calls answered UNAVAILABLE (gRPC's retry
    policy, exponential backoff)."""

    def __init__(
        self,
        url: str,
        *,
        multiplex: bool = True,
        channels: int = 1,
        timeout: float = DEFAULT_TIMEOUT_S,
        tls: bool = False,
        tls_ca: bytes | str | os.PathLike[str] | None = None,
        tls_cert: bytes | str | os.PathLike[str] | None = None,
        tls_key: bytes | str | os.PathLike[str] | None = None,
        tls_server_name: str | None = None,
        token: str | None = None,
        retries: int = 4,
    ) -> None:
        if channels < 1:
            raise ValueError("channels must be at least 1")
        self.settings = ChannelSettings(
            url, tls, _path(tls_ca), _path(tls_cert), _path(tls_key), tls_server_name, token, retries
        )
        self.multiplex = multiplex
        self.timeout = timeout
        self._metadata = self.settings.metadata or None
        self._encoder = RequestEncoder()
        self._decoder = ResponseDecoder()
        self._connections = [_Connection(self.settings, i, self._decoder) for i in range(channels)]
        self._next = itertools.cycle(self._connections).__next__
        self._ids = RequestIds()
        self._stubs: dict[str, Any] = {}

    # ----- inference --------------------------------------------------------------------------------------

    def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        outputs: Sequence[str] | None = None,
        version: str = "",
        timeout: float | None = None,
        parameters: Mapping[str, ParameterValue] | None = None,
        request_id: str | None = None,
    ) -> InferResult:
        """Run `model` on `inputs` ({name: array}); `outputs` limits the outputs returned (default: all)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        connection = self._next()
        if self.multiplex and connection.multiplexer.supported:
            rid = request_id or self._ids()
            data = self._encoder.encode(
                model, inputs, outputs, version, rid, parameters, timeout_us=max(1, int(timeout * 1e6))
            )
            try:
                answer = connection.multiplexer.call(rid, data, timeout)
            except TimeoutError:
                raise DeadlineExceeded(
                    f"no answer from '{model}' within {timeout:g} s", "DEADLINE_EXCEEDED"
                ) from None
            if answer is not RESEND:
                if isinstance(answer, InferenceServerError):
                    raise answer
                return answer  # type: ignore[return-value]  # RESEND is the only other kind
            timeout = max(deadline - time.monotonic(), 0.0)
        else:
            data = self._encoder.encode(model, inputs, outputs, version, request_id or "", parameters)
        try:
            response = connection.model_infer(data, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        return self._decoder.decode(response)

    def stream(
        self, requests: Iterable[StreamRequest], timeout: float | None = None
    ) -> Iterator[StreamResponse]:
        """Bidirectional streaming: sends `requests` as they come and yields one StreamResponse per request,
        in the order the server answers, each matched to its request by id. An in-band error is raised by that
        item's `.result()`; the stream goes on. `timeout` bounds the whole stream (default: none)."""
        connection = self._next()
        sent: dict[str, StreamRequest] = {}

        def messages() -> Iterator[bytes]:
            for request in requests:
                if not request.request_id:
                    request.request_id = self._ids()
                sent[request.request_id] = request
                yield self._encoder.encode(
                    request.model, request.inputs, request.outputs, request.version, request.request_id,
                    request.parameters,
                )  # fmt: skip

        call = connection.channel.stream_stream(f"/{SERVICE}/ModelStreamInfer")(
            messages(), timeout=timeout, metadata=self._metadata
        )
        try:
            for message in call:
                request_id, answer = self._decoder.decode_stream(message)
                yield StreamResponse(sent.pop(request_id, None), answer)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        finally:
            call.cancel()

    # ----- the other protocol calls -----------------------------------------------------------------------

    def _call(self, method: str, request: Any, response_type: Any, timeout: float | None) -> Any:
        stub = self._stubs.get(method)
        if stub is None:
            stub = self._stubs[method] = self._connections[0].unary(method, type(request), response_type)
        try:
            return stub(
                request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    def _admin(self, request: pb.RepositoryModelLoadRequest, timeout: float | None) -> AdminResult:
        method = self._connections[0].unary("RepositoryModelLoad", pb.RepositoryModelLoadRequest,
                                            pb.RepositoryModelLoadResponse)  # fmt: skip
        try:
            _, call = method.with_call(
                request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        return AdminResult.from_trailers(call.trailing_metadata())

    def server_live(self, timeout: float | None = None) -> bool:
        return bool(self._call("ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse, timeout).live)

    def server_ready(self, timeout: float | None = None) -> bool:
        return bool(self._call("ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse, timeout).ready)

    def model_ready(self, model: str, version: str = "", timeout: float | None = None) -> bool:
        request = pb.ModelReadyRequest(name=model, version=version)
        return bool(self._call("ModelReady", request, pb.ModelReadyResponse, timeout).ready)

    def server_metadata(self, timeout: float | None = None) -> ServerMetadata:
        response = self._call(
            "ServerMetadata", pb.ServerMetadataRequest(), pb.ServerMetadataResponse, timeout
        )
        return ServerMetadata.from_message(response)

    def model_metadata(self, model: str, version: str = "", timeout: float | None = None) -> ModelMetadata:
        request = pb.ModelMetadataRequest(name=model, version=version)
        return ModelMetadata.from_message(
            self._call("ModelMetadata", request, pb.ModelMetadataResponse, timeout)
        )

    def model_config(
        self, model: str, version: str = "", timeout: float | None = None
    ) -> model_config_pb2.ModelConfig:
        request = pb.ModelConfigRequest(name=model, version=version)
        return self._call("ModelConfig", request, pb.ModelConfigResponse, timeout).config

    def statistics(
        self, model: str = "", version: str = "", timeout: float | None = None
    ) -> pb.ModelStatisticsResponse:
        """Triton's per-model statistics (every model when `model` is empty)."""
        request = pb.ModelStatisticsRequest(name=model, version=version)
        return self._call("ModelStatistics", request, pb.ModelStatisticsResponse, timeout)

    def repository_index(
        self, ready_only: bool = False, timeout: float | None = None
    ) -> list[RepositoryModel]:
        request = pb.RepositoryIndexRequest(ready=ready_only)
        return RepositoryModel.rows(
            self._call("RepositoryIndex", request, pb.RepositoryIndexResponse, timeout)
        )

    def load_model(
        self,
        model: str,
        config: str | Mapping[str, Any] | None = None,
        files: Mapping[str, bytes] | None = None,
        timeout: float | None = None,
    ) -> None:
        """Load (or reload) a model: from the server's repository, or from `config` (JSON) and `files`
        ({"1/model.onnx": bytes}). Never retried."""
        self._call(
            "RepositoryModelLoad", load_request(model, config, files), pb.RepositoryModelLoadResponse, timeout
        )

    def unload_model(self, model: str, unload_dependents: bool = False, timeout: float | None = None) -> None:
        request = pb.RepositoryModelUnloadRequest(model_name=model)
        if unload_dependents:
            request.parameters["unload_dependents"].bool_param = True
        self._call("RepositoryModelUnload", request, pb.RepositoryModelUnloadResponse, timeout)

    def health(self, service: str = "", timeout: float | None = None) -> str:
        """grpc.health.v1 Check: "SERVING", "NOT_SERVING" or "SERVICE_UNKNOWN"; `service` is a model name,
        or "" for the whole server."""
        stub = self._connections[0].channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            response = stub(
                health_pb2.HealthCheckRequest(service=service),
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        return _HEALTH_NAMES.get(response.status, str(response.status))

    def rollback(self, model: str, to: int | None = None, timeout: float | None = None) -> AdminResult:
        """hotwire: send the model's traffic back to version `to` (default: the previous one)."""
        return self._admin(rollback_request(model, to), timeout)

    def set_traffic(self, model: str, timeout: float | None = None, **policy: Any) -> AdminResult:
        """hotwire: change the model's traffic policy (stable=, canary=, canary_weight=, sticky_parameter=,
        shadow=, shadow_fraction=, standby=)."""
        return self._admin(traffic_request(model, policy), timeout)

    # ----- lifetime -----------------------------------------------------------------------------------------

    def close(self) -> None:
        for connection in self._connections:
            connection.multiplexer.close()
            connection.channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _path(value: bytes | str | os.PathLike[str] | None) -> bytes | str | None:
    return value if value is None or isinstance(value, (bytes, str)) else os.fspath(value)
