"""`AsyncClient`: the asyncio client, with `Client`'s arguments and methods as coroutines.

    async with AsyncClient("localhost:8001") as client:
        result = await client.infer("classifier", {"input": x})

Create and use it on one event loop (gRPC's asyncio channels belong to the loop they were made on).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2

from hotwire.clients.channel import SERVICE, ChannelSettings
from hotwire.clients.client import _HEALTH_NAMES, DEFAULT_TIMEOUT_S, _path
from hotwire.clients.errors import DeadlineExceeded, InferenceServerError, error_from_rpc
from hotwire.clients.multiplex import RESEND, AsyncMultiplexer
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

__all__ = ["AsyncClient"]


class _Connection:
    def __init__(self, settings: ChannelSettings, index: int, decoder: ResponseDecoder) -> None:
        self.channel = settings.aio_channel(index)
        self.model_infer = self.channel.unary_unary(f"/{SERVICE}/ModelInfer")
        self.stream_infer = self.channel.stream_stream(f"/{SERVICE}/ModelStreamInfer")
        metadata = settings.metadata or None
        self.multiplexer = AsyncMultiplexer(
            lambda requests: self.stream_infer(requests, metadata=metadata), decoder
        )

    def unary(self, method: str, request_type: Any, response_type: Any) -> Any:
        return self.channel.unary_unary(
            f"/{SERVICE}/{method}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )


class AsyncClient:
    """The asyncio client; see `hotwire.clients.Client` for the arguments."""

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

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        outputs: Sequence[str] | None = None,
        version: str = "",
        timeout: float | None = None,
        parameters: Mapping[str, ParameterValue] | None = None,
        request_id: str | None = None,
    ) -> InferResult:
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        connection = self._next()
        if self.multiplex and connection.multiplexer.supported:
            rid = request_id or self._ids()
            data = self._encoder.encode(
                model, inputs, outputs, version, rid, parameters, timeout_us=max(1, int(timeout * 1e6))
            )
            try:
                answer = await connection.multiplexer.call(rid, data, timeout)
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
            response = await connection.model_infer(data, timeout=timeout, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        return self._decoder.decode(response)

    async def stream(
        self, requests: Iterable[StreamRequest] | AsyncIterable[StreamRequest], timeout: float | None = None
    ) -> AsyncIterator[StreamResponse]:
        """As `Client.stream`, as an async iterator; `requests` may be an async iterable."""
        connection = self._next()
        sent: dict[str, StreamRequest] = {}

        def encoded(request: StreamRequest) -> bytes:
            if not request.request_id:
                request.request_id = self._ids()
            sent[request.request_id] = request
            return self._encoder.encode(
                request.model, request.inputs, request.outputs, request.version, request.request_id,
                request.parameters,
            )  # fmt: skip

        async def messages() -> AsyncIterator[bytes]:
            if isinstance(requests, AsyncIterable):
                async for request in requests:
                    yield encoded(request)
            else:
                for request in requests:
                    yield encoded(request)

        call = connection.stream_infer(messages(), timeout=timeout, metadata=self._metadata)
        try:
            async for message in call:
                request_id, answer = self._decoder.decode_stream(message)
                yield StreamResponse(sent.pop(request_id, None), answer)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        finally:
            call.cancel()

    async def _call(self, method: str, request: Any, response_type: Any, timeout: float | None) -> Any:
        stub = self._stubs.get(method)
        if stub is None:
            stub = self._stubs[method] = self._connections[0].unary(method, type(request), response_type)
        try:
            return await stub(
                request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None

    async def _admin(self, request: pb.RepositoryModelLoadRequest, timeout: float | None) -> AdminResult:
        method = self._connections[0].unary("RepositoryModelLoad", pb.RepositoryModelLoadRequest,
                                            pb.RepositoryModelLoadResponse)  # fmt: skip
        call = method(request, timeout=self.timeout if timeout is None else timeout, metadata=self._metadata)
        try:
            await call
            trailers = await call.trailing_metadata()
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        return AdminResult.from_trailers(trailers)

    async def server_live(self, timeout: float | None = None) -> bool:
        return bool(
            (await self._call("ServerLive", pb.ServerLiveRequest(), pb.ServerLiveResponse, timeout)).live
        )

    async def server_ready(self, timeout: float | None = None) -> bool:
        response = await self._call("ServerReady", pb.ServerReadyRequest(), pb.ServerReadyResponse, timeout)
        return bool(response.ready)

    async def model_ready(self, model: str, version: str = "", timeout: float | None = None) -> bool:
        request = pb.ModelReadyRequest(name=model, version=version)
        return bool((await self._call("ModelReady", request, pb.ModelReadyResponse, timeout)).ready)

    async def server_metadata(self, timeout: float | None = None) -> ServerMetadata:
        request = pb.ServerMetadataRequest()
        return ServerMetadata.from_message(
            await self._call("ServerMetadata", request, pb.ServerMetadataResponse, timeout)
        )

    async def model_metadata(
        self, model: str, version: str = "", timeout: float | None = None
    ) -> ModelMetadata:
        request = pb.ModelMetadataRequest(name=model, version=version)
        return ModelMetadata.from_message(
            await self._call("ModelMetadata", request, pb.ModelMetadataResponse, timeout)
        )

    async def model_config(
        self, model: str, version: str = "", timeout: float | None = None
    ) -> model_config_pb2.ModelConfig:
        request = pb.ModelConfigRequest(name=model, version=version)
        return (await self._call("ModelConfig", request, pb.ModelConfigResponse, timeout)).config

    async def statistics(
        self, model: str = "", version: str = "", timeout: float | None = None
    ) -> pb.ModelStatisticsResponse:
        request = pb.ModelStatisticsRequest(name=model, version=version)
        return await self._call("ModelStatistics", request, pb.ModelStatisticsResponse, timeout)

    async def repository_index(
        self, ready_only: bool = False, timeout: float | None = None
    ) -> list[RepositoryModel]:
        request = pb.RepositoryIndexRequest(ready=ready_only)
        return RepositoryModel.rows(
            await self._call("RepositoryIndex", request, pb.RepositoryIndexResponse, timeout)
        )

    async def load_model(
        self,
        model: str,
        config: str | Mapping[str, Any] | None = None,
        files: Mapping[str, bytes] | None = None,
        timeout: float | None = None,
    ) -> None:
        request = load_request(model, config, files)
        await self._call("RepositoryModelLoad", request, pb.RepositoryModelLoadResponse, timeout)

    async def unload_model(
        self, model: str, unload_dependents: bool = False, timeout: float | None = None
    ) -> None:
        request = pb.RepositoryModelUnloadRequest(model_name=model)
        if unload_dependents:
            request.parameters["unload_dependents"].bool_param = True
        await self._call("RepositoryModelUnload", request, pb.RepositoryModelUnloadResponse, timeout)

    async def health(self, service: str = "", timeout: float | None = None) -> str:
        stub = self._connections[0].channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            response = await stub(
                health_pb2.HealthCheckRequest(service=service),
                timeout=self.timeout if timeout is None else timeout,
                metadata=self._metadata,
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        return _HEALTH_NAMES.get(response.status, str(response.status))

    async def rollback(self, model: str, to: int | None = None, timeout: float | None = None) -> AdminResult:
        return await self._admin(rollback_request(model, to), timeout)

    async def set_traffic(self, model: str, timeout: float | None = None, **policy: Any) -> AdminResult:
        return await self._admin(traffic_request(model, policy), timeout)

    async def close(self) -> None:
        for connection in self._connections:
            await connection.multiplexer.close()
            await connection.channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
