"""The `inference.GRPCInferenceService` servicer: the gRPC frontend of the data plane.

It owns what is gRPC's own: method registration, raw bytes in and out of ModelInfer and ModelStreamInfer (no
(de)serializers: wire.py decodes and encodes without copying tensors), a stream's ordering and window, and
mapping every exception to its status in one wrapper, `_unary` (errors.status_of), so no RPC can kill the
server. Everything else, the inference sequence and its accounting included, is the data plane's
(dataplane.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from hotwire.proto import grpc_service_pb2 as pb
from hotwire.server import wire
from hotwire.server.auth import Access, AccessPolicy, Caller, grpc_peer_host
from hotwire.server.dataplane import DataPlane
from hotwire.server.errors import (
    HotwireError,
    InvalidInput,
    Overloaded,
    Unavailable,
    Unimplemented,
    status_of,
)
from hotwire.server.limits import retry_after_header
from hotwire.server.model_version import ModelVersion
from hotwire.server.tasks import BackgroundTasks

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"
STREAM_ERROR_STATUS_PARAMETER = "hotwire_error_status"  # an in-band error's gRPC status name
STREAM_WINDOW = 64  # requests of one stream in flight at once; the reader waits beyond that
# A clean end needs this long without a new inference call once draining; clients backing off after an
# UNAVAILABLE (a retry policy's initial backoff is typically 0.1 s or more) leave such a gap.
DRAIN_QUIET_S = 0.05
SHUTTING_DOWN = "the server is shutting down: send the request to another replica"
SHUTTING_DOWN_STREAM = (
    "the server is shutting down: every message read was answered; send those unanswered to another replica"
)

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _authorization(context: grpc.aio.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            return str(value)
    return None


def _admit(policy: AccessPolicy, access: Access, context: grpc.aio.ServicerContext) -> Caller:
    """The access policy's decision for this call (raises Unauthenticated / PermissionDenied)."""
    return policy.check(access, _authorization(context), grpc_peer_host(context.peer()))


def _retry_hint(exc: Exception, context: grpc.aio.ServicerContext) -> None:
    """An Overloaded refusal says when to come back: `retry-after` (seconds) and gRPC's own
    `grpc-retry-pushback-ms`, which a client's retry policy obeys."""
    if isinstance(exc, Overloaded):
        context.set_trailing_metadata(
            (
                ("retry-after", retry_after_header(exc.retry_after_s)),
                ("grpc-retry-pushback-ms", str(max(1, round(exc.retry_after_s * 1e3)))),
            )
        )


def _unary(handler: Handler, policy: AccessPolicy | None = None, access: Access = Access.OPEN) -> Handler:
    """Admit the call (the access policy), then answer any exception with its gRPC status and a message; log
    the unexpected ones with their traceback."""
    checked = policy is not None and policy.needs_check(access)  # decided once: no cost when open

    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if checked:
                _admit(policy, access, context)  # type: ignore[arg-type]
            return await handler(request, context)
        except Exception as exc:
            code, message = status_of(exc)
            if not isinstance(exc, HotwireError):
                log.exception("unexpected error in %s", handler.__name__)
            _retry_hint(exc, context)
            await context.abort(code, message)

    wrapped.__name__ = handler.__name__
    return wrapped


def _encode_unary(version: ModelVersion, response: wire.InferResponse) -> bytes:
    return version.encoder.encode(response)


def _encode_stream(version: ModelVersion, response: wire.InferResponse) -> bytes:
    return version.encoder.encode_stream(response)


def _parsed(handler: Handler, request_type: Any) -> Handler:
    """`handler` taking the request's bytes: an undecodable message is the client's INVALID_ARGUMENT."""

    async def parse_then_handle(data: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = request_type.FromString(data)
        except DecodeError:
            raise InvalidInput(
                f"the request is not a valid {request_type.DESCRIPTOR.full_name} message"
            ) from None
        return await handler(request, context)

    parse_then_handle.__name__ = handler.__name__
    return parse_then_handle


class InferenceService:
    def __init__(self, plane: DataPlane, access: AccessPolicy | None = None) -> None:
        self._plane = plane
        self._access = access or AccessPolicy(None)
        self._check_infer = self._access.needs_check(Access.INFER)
        # whether an inference call needs its caller known: for the access policy or per-caller rates
        self._identify = self._check_infer or plane.admission.per_caller
        # each stream awaits its own reader, so a reader's error surfaces there, once
        self._stream_readers = BackgroundTasks("ModelStreamInfer readers", log_failures=False)
        self._draining = False
        self._last_arrival = 0.0  # monotonic; kept only while draining
        self._inflight = 0  # ModelInfer calls and open streams
        self._idle = asyncio.Event()  # set by the last call to leave once draining

    def drain(self) -> None:
        """Shutdown's first step, before gRPC's own: new ModelInfer calls and streams are answered UNAVAILABLE
        (gRPC's shutdown would cancel the calls that race it: CANCELLED, which retry policies do not retry),
        and every open stream stops reading, answers what it has read, and ends with UNAVAILABLE (an idle
        stream would otherwise hold the shutdown for the whole grace period)."""
        self._draining = True
        self._last_arrival = time.monotonic()
        self._stream_readers.cancel_all()

    @property
    def draining(self) -> bool:
        return self._draining

    async def drained(self) -> None:
        """Once no ModelInfer call or stream is in flight, and none arrived for DRAIN_QUIET_S: gRPC's shutdown
        cancels calls not yet handed to a handler (CANCELLED, which no retry policy retries), so it starts
        only once clients have taken their UNAVAILABLE answers and backed off. Call after `drain`."""
        while True:
            while self._inflight:
                self._idle.clear()
                await self._idle.wait()
            quiet = time.monotonic() - self._last_arrival
            if quiet >= DRAIN_QUIET_S:
                return
            await asyncio.sleep(DRAIN_QUIET_S - quiet)

    def _enter(self) -> None:
        if self._draining:
            self._last_arrival = time.monotonic()
            raise Unavailable(SHUTTING_DOWN)
        self._inflight += 1

    def _leave(self) -> None:
        self._inflight -= 1
        if not self._inflight and self._draining:  # only a draining shutdown waits for zero
            self._idle.set()

    # ----- health and metadata ------------------------------------------------------------------------------

    async def server_live(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._plane.server_ready())

    async def model_ready(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._plane.model_ready(request.name, request.version))

    async def server_metadata(
        self, request: pb.ServerMetadataRequest, context: Any
    ) -> pb.ServerMetadataResponse:
        return self._plane.server_metadata()

    async def model_metadata(
        self, request: pb.ModelMetadataRequest, context: Any
    ) -> pb.ModelMetadataResponse:
        return self._plane.model_metadata(request.name, request.version)

    async def model_config(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self._plane.model_config(request.name, request.version))

    async def model_statistics(
        self, request: pb.ModelStatisticsRequest, context: Any
    ) -> pb.ModelStatisticsResponse:
        return self._plane.statistics(request.name, request.version)

    # ----- inference ----------------------------------------------------------------------------------------

    def _decode(self, data: bytes, received: float) -> wire.InferRequest:
        try:
            return wire.decode_request(data)
        except InvalidInput:
            _, model_name, model_version = wire.request_identity(data)
            self._plane.undecodable(model_name, model_version, received)
            raise

    def _caller(self, context: grpc.aio.ServicerContext) -> Hashable | None:
        """Admit an inference call (the access policy) and name its caller for per-caller rate limits: the
        API key's index, or the peer's address without keys (None when no per-caller limit is set)."""
        key = _admit(self._access, Access.INFER, context).key if self._check_infer else None
        if key is None and self._plane.admission.per_caller:
            return grpc_peer_host(context.peer())
        return key

    async def model_infer(self, data: bytes, context: Any) -> bytes:
        received = time.perf_counter()
        caller = self._caller(context) if self._identify else None
        self._enter()
        try:
            request = self._decode(data, received)
            return await self._plane.infer(request, received, _encode_unary, caller, context.time_remaining)
        finally:
            self._leave()

    async def model_stream_infer(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        """Requests of one stream run concurrently; responses go back in request order, errors in-band."""
        try:
            caller = self._caller(context) if self._identify else None
            self._enter()
        except HotwireError as exc:
            await context.abort(exc.status, str(exc))
        pending: asyncio.Queue[asyncio.Task[bytes] | None] = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)
        read_all = False

        async def read() -> None:
            nonlocal read_all
            try:
                async for data in requests:
                    try:
                        await window.acquire()
                    finally:  # a message already read is answered, even when the shutdown stops the reading
                        pending.put_nowait(asyncio.create_task(self._stream_one(data, caller, context)))
                read_all = True
            except asyncio.CancelledError:
                if not self._draining:
                    raise
            finally:
                pending.put_nowait(None)  # unbounded queue: never blocks, even when cancelled

        reader = self._stream_readers.spawn(read(), name="ModelStreamInfer reader")
        try:
            while (task := await pending.get()) is not None:
                result = await task
                window.release()
                yield result
            await reader  # a reader error (other than the client ending the stream) surfaces here
        finally:
            self._leave()
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()
        if not read_all:
            # The shutdown stopped the reading. Every message read was answered, but the client cannot know
            # whether more would have been read, so the stream does not end OK: UNAVAILABLE says to send what
            # is unanswered elsewhere.
            await context.abort(grpc.StatusCode.UNAVAILABLE, SHUTTING_DOWN_STREAM)

    async def _stream_one(self, data: bytes, caller: Hashable | None, context: Any) -> bytes:
        """One stream message: its response, or its error in-band (the stream goes on)."""
        received = time.perf_counter()
        request: wire.InferRequest | None = None
        try:
            request = self._decode(data, received)
            return await self._plane.infer(request, received, _encode_stream, caller, context.time_remaining)
        except Exception as exc:
            status, message = status_of(exc)
            if not isinstance(exc, HotwireError):
                log.exception("unexpected error in a ModelStreamInfer request")
            request_id, model_name = (
                (request.id, request.model_name) if request is not None else wire.request_identity(data)[:2]
            )
            response = pb.ModelInferResponse(id=request_id, model_name=model_name)
            # The stream's error carries no status of its own; hotwire's client reads it from here (other
            # clients ignore an unknown parameter).
            response.parameters[STREAM_ERROR_STATUS_PARAMETER].string_param = status.name
            return pb.ModelStreamInferResponse(
                error_message=message, infer_response=response
            ).SerializeToString()

    # ----- model repository -------------------------------------------------------------------------------

    async def repository_index(
        self, request: pb.RepositoryIndexRequest, context: Any
    ) -> pb.RepositoryIndexResponse:
        return self._plane.repository_index(request.ready)

    async def repository_model_load(
        self, request: pb.RepositoryModelLoadRequest, context: Any
    ) -> pb.RepositoryModelLoadResponse:
        params = {
            key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
            for key, value in request.parameters.items()
        }
        result = await self._plane.load(request.model_name, params)
        context.set_trailing_metadata(tuple(result.metadata()))
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(
        self, request: pb.RepositoryModelUnloadRequest, context: Any
    ) -> pb.RepositoryModelUnloadResponse:
        await self._plane.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # ----- registration ----------------------------------------------------------------------------------

    def register(self, server: grpc.aio.Server) -> None:
        """Add every RPC of the service to `server`, as registered methods: gRPC core matches their paths
        directly instead of asking a generic handler on every call (every method of the service is in the
        table)."""
        server.add_registered_method_handlers(SERVICE_NAME, self.method_handlers())

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        def unary(
            handler: Handler, request_type: Any, response_type: Any, access: Access = Access.INFER
        ) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                _unary(_parsed(handler, request_type), self._access, access),
                # no request_deserializer: gRPC answers its DecodeError UNKNOWN; _parsed makes it
                # INVALID_ARGUMENT
                response_serializer=response_type.SerializeToString,
            )

        handlers: dict[str, grpc.RpcMethodHandler] = {
            # liveness and readiness stay open: orchestrators probe them without credentials
            "ServerLive": unary(self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse, Access.OPEN),
            "ServerReady": unary(
                self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse, Access.OPEN
            ),
            "ModelReady": unary(self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse, Access.OPEN),
            "ServerMetadata": unary(
                self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse
            ),
            "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelConfig": unary(self.model_config, pb.ModelConfigRequest, pb.ModelConfigResponse),
            "ModelStatistics": unary(
                self.model_statistics, pb.ModelStatisticsRequest, pb.ModelStatisticsResponse
            ),
            "RepositoryIndex": unary(
                self.repository_index, pb.RepositoryIndexRequest, pb.RepositoryIndexResponse
            ),
            "RepositoryModelLoad": unary(
                self.repository_model_load,
                pb.RepositoryModelLoadRequest,
                pb.RepositoryModelLoadResponse,
                Access.ADMIN,
            ),
            "RepositoryModelUnload": unary(
                self.repository_model_unload,
                pb.RepositoryModelUnloadRequest,
                pb.RepositoryModelUnloadResponse,
                Access.ADMIN,
            ),
            # raw bytes both ways: no deserializer, no serializer (wire.py does both without copying tensors)
            # admitted in model_infer itself, which also names the caller for per-caller rate limits
            "ModelInfer": grpc.unary_unary_rpc_method_handler(_unary(self.model_infer)),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(self.model_stream_infer),
        }
        for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
            if method.name not in handlers:
                handlers[method.name] = _unimplemented(
                    method.name, method.client_streaming, method.server_streaming
                )
        return handlers


def _unimplemented(name: str, client_streaming: bool, server_streaming: bool) -> grpc.RpcMethodHandler:
    message = f"{name} is not implemented by this hotwire server yet"

    async def reject(request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise Unimplemented(message)

    if client_streaming or server_streaming:

        async def reject_stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)
            yield b""  # pragma: no cover  (abort raises; this makes the function a generator)

        return grpc.stream_stream_rpc_method_handler(reject_stream)
    reject.__name__ = name
    return grpc.unary_unary_rpc_method_handler(_unary(reject))
