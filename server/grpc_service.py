"""The `inference.GRPCInferenceService` servicer: each RPC a few lines that delegate.

Registered without (de)serializers for ModelInfer and ModelStreamInfer, so they receive raw request bytes and return
raw response bytes (see wire.py); every other RPC uses the generated protobuf classes. One wrapper, `_unary`, maps
every exception to its status code (errors.status_of), so no RPC can kill the server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from importlib import metadata
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

from hotwire.proto import grpc_service_pb2 as pb
from hotwire.server import wire
from hotwire.server.errors import HotwireError, InvalidInput, NotFound, Unavailable, Unimplemented, status_of
from hotwire.server.loader import ModelVersion
from hotwire.server.logs import RequestLogger
from hotwire.server.stats import ComputeTimes, Duration
from hotwire.server.model_control import ModelControl
from hotwire.server.registry import Registry

log = logging.getLogger(__name__)

SERVICE_NAME = "inference.GRPCInferenceService"
# Extensions advertised in ServerMetadata: only what really works (perf_analyzer acts on them). `statistics` only in a
# single process: a worker of --workers N answers with its own counts, which are not the server's.
EXTENSIONS = ("model_configuration", "model_repository", "statistics")
STREAM_WINDOW = 64  # requests of one stream in flight at once; the reader waits beyond that
CLIENT_ERRORS = (InvalidInput, NotFound)  # the client's fault: not counted against a canary

try:
    SERVER_VERSION = metadata.version("hotwire")
except metadata.PackageNotFoundError:  # running from a source tree without an install
    SERVER_VERSION = "0.0.0"

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


def _unary(handler: Handler) -> Handler:
    """Answer any exception with its gRPC status and a message; log the unexpected ones with their traceback."""

    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await handler(request, context)
        except Exception as exc:
            code, message = status_of(exc)
            if not isinstance(exc, HotwireError):
                log.exception("unexpected error in %s", handler.__name__)
            await context.abort(code, message)

    wrapped.__name__ = handler.__name__
    return wrapped


class InferenceService:
    def __init__(self, registry: Registry, control: ModelControl, is_ready: Callable[[], bool],
                 request_logger: RequestLogger | None = None, exact_statistics: bool = True) -> None:
        self._registry = registry
        self._control = control
        self._is_ready = is_ready
        self._request_logger = request_logger or RequestLogger()
        self._extensions = [e for e in EXTENSIONS if exact_statistics or e != "statistics"]
        self._stream_readers: set[asyncio.Task[None]] = set()
        self._streams_ending = False

    def end_streams(self) -> None:
        """Shutdown: every open ModelStreamInfer stops reading, answers what it has read, and ends with OK (an idle
        stream would otherwise hold the shutdown for the whole grace period); streams opened from now on end at once."""
        self._streams_ending = True
        for reader in list(self._stream_readers):
            reader.cancel()

    # ----- health and metadata ------------------------------------------------------------------------------

    async def server_live(self, request: pb.ServerLiveRequest, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def server_ready(self, request: pb.ServerReadyRequest, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._is_ready())

    async def model_ready(self, request: pb.ModelReadyRequest, context: Any) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._registry.is_ready(request.name, request.version))

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="hotwire", version=SERVER_VERSION, extensions=self._extensions)

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Any) -> pb.ModelMetadataResponse:
        version = self._registry.route(request.name, request.version)
        sig = version.signature
        entry = self._registry.entry(request.name)
        return pb.ModelMetadataResponse(
            name=version.name,
            versions=[str(v) for v in sorted(entry.versions)],
            platform=version.config.platform,
            inputs=[pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype.name, shape=sig.full_shape(s))
                    for s in sig.inputs],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(name=s.name, datatype=s.datatype.name, shape=sig.full_shape(s))
                     for s in sig.outputs],
        )

    async def model_config(self, request: pb.ModelConfigRequest, context: Any) -> pb.ModelConfigResponse:
        return pb.ModelConfigResponse(config=self._registry.route(request.name, request.version).config)

    # ----- inference ----------------------------------------------------------------------------------------

    async def model_infer(self, data: bytes, context: Any) -> bytes:
        received = time.perf_counter()
        try:
            request = wire.decode_request(data)
        except InvalidInput:
            self._undecodable(data, received)
            raise
        version = self._registry.route(request.model_name, request.model_version, request)
        decoded = time.perf_counter()
        try:
            response = await version.infer(request)
        except Exception as exc:
            if not isinstance(exc, CLIENT_ERRORS):  # a bad request says nothing about the version's health
                self._registry.after_response(version, request, None, time.perf_counter() - received, False)
            raise
        computed = time.perf_counter()
        encoded = version.encoder.encode(response)
        self._finished(version, request, response, received, decoded, computed)
        return encoded

    def _undecodable(self, data: bytes, received: float) -> tuple[str, str]:
        """A request that failed to decode (wrong byte size, unknown datatype, ...) still counts as a failed request
        of the model and version it names, like one that fails validation. Returns its (id, model name)."""
        request_id, model_name, model_version = wire.request_identity(data)
        try:
            version = self._registry.route(model_name, model_version)
        except HotwireError:
            return request_id, model_name  # no such model (or not ready): nothing to count it against
        version.stats.record_request(False, time.perf_counter() - received, 0.0, ComputeTimes(), "OTHER")
        return request_id, model_name

    def _finished(self, version: ModelVersion, request: wire.InferRequest, response: wire.InferResponse,
                  received: float, decoded: float, computed: float) -> None:
        """After a successful request (unary or stream): statistics, the canary guard and shadow, the request log."""
        done = time.perf_counter()
        elapsed = done - received
        version.stats.handler.add(elapsed)
        self._registry.after_response(version, request, response, elapsed, True)
        if self._request_logger.enabled:
            stages = {"decode": decoded - received, "queue": response.queue_s, "preprocess": response.compute_input_s,
                      "compute": response.compute_infer_s, "encode": done - computed}
            # validation, routing, the hand-offs to and from the instance thread, output slicing: so the stages add up
            stages["other"] = max(0.0, elapsed - sum(stages.values()))
            self._request_logger.observe(version.name, version.version_str, request.id, elapsed, stages)

    async def model_stream_infer(self, requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        """Requests of one stream run concurrently; responses go back in request order, errors in-band."""
        pending: asyncio.Queue[asyncio.Task[bytes] | None] = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)

        async def read() -> None:
            try:
                if self._streams_ending:
                    return
                async for data in requests:
                    try:
                        await window.acquire()
                    finally:  # a message already read is answered, even when the shutdown stops the reading
                        pending.put_nowait(asyncio.create_task(self._stream_one(data)))
            except asyncio.CancelledError:
                if not self._streams_ending:
                    raise
            finally:
                pending.put_nowait(None)  # unbounded queue: never blocks, even when cancelled

        reader = asyncio.create_task(read())
        self._stream_readers.add(reader)
        reader.add_done_callback(self._stream_readers.discard)
        try:
            while (task := await pending.get()) is not None:
                result = await task
                window.release()
                yield result
            await reader  # a reader error (other than the client ending the stream) surfaces here
        finally:
            reader.cancel()
            while not pending.empty():
                leftover = pending.get_nowait()
                if leftover is not None:
                    leftover.cancel()

    async def _stream_one(self, data: bytes) -> bytes:
        request_id = model_name = ""
        received = time.perf_counter()
        try:
            try:
                request = wire.decode_request(data)
            except InvalidInput:
                request_id, model_name = self._undecodable(data, received)
                raise
            request_id, model_name = request.id, request.model_name
            version = self._registry.route(request.model_name, request.model_version, request)
            decoded = time.perf_counter()
            try:
                response = await version.infer(request)
            except Exception as exc:
                if not isinstance(exc, CLIENT_ERRORS):
                    self._registry.after_response(version, request, None, time.perf_counter() - received, False)
                raise
            computed = time.perf_counter()
            encoded = version.encoder.encode_stream(response)
            self._finished(version, request, response, received, decoded, computed)
            return encoded
        except Exception as exc:
            _, message = status_of(exc)
            if not isinstance(exc, HotwireError):
                log.exception("unexpected error in a ModelStreamInfer request")
            return pb.ModelStreamInferResponse(
                error_message=message, infer_response=pb.ModelInferResponse(id=request_id, model_name=model_name)
            ).SerializeToString()

    # ----- statistics -------------------------------------------------------------------------------------

    async def model_statistics(self, request: pb.ModelStatisticsRequest, context: Any) -> pb.ModelStatisticsResponse:
        """Exact counts and cumulative durations per loaded version (Triton's statistics extension)."""
        entries = [self._registry.entry(request.name)] if request.name else self._registry.models()
        if request.name and not entries[0].versions:  # as Triton: a model with no version loaded has no statistics
            raise Unavailable(f"model '{request.name}' has no version loaded")
        found = [
            _statistics(version)
            for entry in entries
            for number, version in sorted(entry.versions.items())
            if not request.version or request.version == str(number)
        ]
        if request.name and request.version and not found:
            raise NotFound(f"model '{request.name}' has no version {request.version} loaded")
        return pb.ModelStatisticsResponse(model_stats=found)

    # ----- model repository -------------------------------------------------------------------------------

    async def repository_index(self, request: pb.RepositoryIndexRequest, context: Any) -> pb.RepositoryIndexResponse:
        return pb.RepositoryIndexResponse(models=[
            pb.RepositoryIndexResponse.ModelIndex(name=name, version=version, state=state, reason=reason)
            for name, version, state, reason in self._control.index(request.ready)
        ])

    async def repository_model_load(self, request: pb.RepositoryModelLoadRequest,
                                    context: Any) -> pb.RepositoryModelLoadResponse:
        params = {key: getattr(value, value.WhichOneof("parameter_choice") or "string_param")
                  for key, value in request.parameters.items()}
        result = await self._control.load(request.model_name, params)
        context.set_trailing_metadata((
            ("hotwire-action", result.action),
            ("hotwire-version", "" if result.version is None else str(result.version)),
            ("hotwire-elapsed-ms", f"{result.elapsed_ms:.3f}"),
        ))
        return pb.RepositoryModelLoadResponse()

    async def repository_model_unload(self, request: pb.RepositoryModelUnloadRequest,
                                      context: Any) -> pb.RepositoryModelUnloadResponse:
        await self._control.unload(request.model_name)
        return pb.RepositoryModelUnloadResponse()

    # ----- generic handler ----------------------------------------------------------------------------------

    def register(self, server: grpc.aio.Server) -> None:
        """Add every RPC of the service to `server`, as registered methods: gRPC core matches their paths directly
        instead of asking a generic handler on every call (every method of the service is in the table)."""
        server.add_registered_method_handlers(SERVICE_NAME, self.method_handlers())

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        def unary(handler: Handler, request_type: Any, response_type: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                _unary(handler), request_deserializer=request_type.FromString,
                response_serializer=response_type.SerializeToString,
            )

        handlers: dict[str, grpc.RpcMethodHandler] = {
            "ServerLive": unary(self.server_live, pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": unary(self.server_ready, pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": unary(self.model_ready, pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": unary(self.server_metadata, pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ModelMetadata": unary(self.model_metadata, pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelConfig": unary(self.model_config, pb.ModelConfigRequest, pb.ModelConfigResponse),
            "ModelStatistics": unary(self.model_statistics, pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
            "RepositoryIndex": unary(self.repository_index, pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
            "RepositoryModelLoad": unary(self.repository_model_load, pb.RepositoryModelLoadRequest,
                                         pb.RepositoryModelLoadResponse),
            "RepositoryModelUnload": unary(self.repository_model_unload, pb.RepositoryModelUnloadRequest,
                                           pb.RepositoryModelUnloadResponse),
            # raw bytes both ways: no deserializer, no serializer (wire.py does both without copying tensors)
            "ModelInfer": grpc.unary_unary_rpc_method_handler(_unary(self.model_infer)),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(self.model_stream_infer),
        }
        for method in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
            if method.name not in handlers:
                handlers[method.name] = _unimplemented(method.name, method.client_streaming, method.server_streaming)
        return handlers


def _duration(value: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=value.count, ns=value.ns)


def _statistics(version: ModelVersion) -> pb.ModelStatistics:
    stats = version.stats
    return pb.ModelStatistics(
        name=version.name, version=version.version_str, last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count, execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(stats.success), fail=_duration(stats.fail), queue=_duration(stats.queue),
            compute_input=_duration(stats.compute_input), compute_infer=_duration(stats.compute_infer),
            compute_output=_duration(stats.compute_output),
        ),
        batch_stats=[
            pb.InferBatchStatistics(batch_size=rows, compute_input=_duration(batch.compute_input),
                                    compute_infer=_duration(batch.compute_infer),
                                    compute_output=_duration(batch.compute_output))
            for rows, batch in sorted(stats.batches.items())
        ],
    )


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
