"""The transport-neutral data plane: every frontend (gRPC, HTTP/REST) calls this, and only translates.

It owns the whole inference sequence — route, validate and run (ModelVersion.infer), encode (through the
frontend's encoder, so its time is counted), and the accounting after it: the handler duration in the
version's statistics, the canary guard, the shadow mirror and the drift monitor (the registry's post-response
hook), and the request log — for a unary call and for each message of a stream alike. The other protocol calls
(health, metadata, config, statistics, repository) answer with the protocol's messages, which each frontend
serializes its own way. Cross-cutting policy for every frontend (authentication, rate limits, fallbacks)
attaches here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from importlib import metadata
from typing import Any, TypeVar

from hotwire.proto import grpc_service_pb2 as pb
from hotwire.proto import model_config_pb2 as mc
from hotwire.server.errors import FailureReason, HotwireError, NotFound, Unavailable, is_client_fault
from hotwire.server.logs import RequestLogger
from hotwire.server.model_control import AdminResult, ModelControl
from hotwire.server.model_version import ModelVersion
from hotwire.server.registry import Registry
from hotwire.server.stats import ComputeTimes, Duration
from hotwire.server.wire import InferRequest, InferResponse

try:
    SERVER_VERSION = metadata.version("hotwire")
except metadata.PackageNotFoundError:  # running from a source tree without an install
    SERVER_VERSION = "0.0.0"

# Extensions advertised in ServerMetadata: only what really works (perf_analyzer acts on them). `statistics`
# only in a single process: a worker of --workers N answers with its own counts, which are not the server's.
EXTENSIONS = ("model_configuration", "model_repository", "statistics")

Encoded = TypeVar("Encoded")
Encoder = Callable[[ModelVersion, InferResponse], Encoded]


class DataPlane:
    def __init__(
        self,
        registry: Registry,
        control: ModelControl,
        is_ready: Callable[[], bool],
        request_logger: RequestLogger | None = None,
        exact_statistics: bool = True,
        max_response_bytes: int = 0,
    ) -> None:
        self._registry = registry
        self._control = control
        self._is_ready = is_ready
        self._request_logger = request_logger or RequestLogger()
        self._max_response_bytes = max_response_bytes  # --max-message-bytes, the same for every frontend
        self.extensions = [e for e in EXTENSIONS if exact_statistics or e != "statistics"]

    # ----- inference ----------------------------------------------------------------------------------------

    async def infer(self, request: InferRequest, received: float, encode: Encoder[Encoded]) -> Encoded:
        """Serve one decoded request (`received`: perf_counter when its bytes arrived) and return what
        `encode` makes of the response. Errors propagate as they are, for the frontend to map."""
        version = self._registry.route(request.model_name, request.model_version, request)
        routed = time.perf_counter()
        try:
            response = await version.infer(request, self._max_response_bytes)
        except Exception as exc:  # a cancelled call (BaseException) is not held against the version either
            if not is_client_fault(exc):  # a bad request says nothing about the version's health
                self._registry.after_response(version, request, None, time.perf_counter() - received, False)
            raise
        computed = time.perf_counter()
        encoded = encode(version, response)
        done = time.perf_counter()
        elapsed = done - received
        version.stats.handler.add(elapsed)
        self._registry.after_response(version, request, response, elapsed, True)
        if self._request_logger.enabled:
            stages = {
                "decode": routed - received,
                "queue": response.queue_s,
                "preprocess": response.compute_input_s,
                "compute": response.compute_infer_s,
                "encode": done - computed,
            }
            # validation, the hand-offs to and from the instance thread, output slicing: so the stages add up
            stages["other"] = max(0.0, elapsed - sum(stages.values()))
            self._request_logger.observe(version.name, version.version_str, request.id, elapsed, stages)
        return encoded

    def undecodable(self, model_name: str, model_version: str, received: float) -> None:
        """A request that failed to decode (wrong byte size, unknown datatype, ...) still counts as a failed
        request of the model and version it names, like one that fails validation."""
        try:
            version = self._registry.route(model_name, model_version)
        except HotwireError:
            return  # no such model (or not ready): nothing to count it against
        version.stats.record_request(
            False, time.perf_counter() - received, 0.0, ComputeTimes(), FailureReason.OTHER
        )

    # ----- health and metadata ------------------------------------------------------------------------------

    def server_ready(self) -> bool:
        return self._is_ready()

    def model_ready(self, name: str, version: str = "") -> bool:
        return self._registry.is_ready(name, version)

    def server_metadata(self) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(name="hotwire", version=SERVER_VERSION, extensions=self.extensions)

    def model_metadata(self, name: str, version: str = "") -> pb.ModelMetadataResponse:
        served = self._registry.route(name, version)
        signature = served.signature
        entry = self._registry.entry(name)

        def tensors(specs: Any) -> list[pb.ModelMetadataResponse.TensorMetadata]:
            return [
                pb.ModelMetadataResponse.TensorMetadata(
                    name=s.name, datatype=s.datatype.name, shape=signature.full_shape(s)
                )
                for s in specs
            ]

        return pb.ModelMetadataResponse(
            name=served.name,
            versions=[str(v) for v in sorted(entry.versions)],
            platform=served.config.platform,
            inputs=tensors(signature.inputs),
            outputs=tensors(signature.outputs),
        )

    def model_config(self, name: str, version: str = "") -> mc.ModelConfig:
        return self._registry.route(name, version).config

    def statistics(self, name: str = "", version: str = "") -> pb.ModelStatisticsResponse:
        """Exact counts and cumulative durations per loaded version (Triton's statistics extension)."""
        entries = [self._registry.entry(name)] if name else self._registry.models()
        if name and not entries[0].versions:  # as Triton: a model with no version loaded has no statistics
            raise Unavailable(f"model '{name}' has no version loaded")
        found = [
            _statistics(loaded)
            for entry in entries
            for number, loaded in sorted(entry.versions.items())
            if not version or version == str(number)
        ]
        if name and version and not found:
            raise NotFound(f"model '{name}' has no version {version} loaded")
        return pb.ModelStatisticsResponse(model_stats=found)

    # ----- model repository -------------------------------------------------------------------------------

    def repository_index(self, ready_only: bool = False) -> pb.RepositoryIndexResponse:
        return pb.RepositoryIndexResponse(
            models=[
                pb.RepositoryIndexResponse.ModelIndex(name=name, version=version, state=state, reason=reason)
                for name, version, state, reason in self._control.index(ready_only)
            ]
        )

    async def load(self, name: str, parameters: dict[str, Any]) -> AdminResult:
        return await self._control.load(name, parameters)

    async def unload(self, name: str) -> None:
        await self._control.unload(name)


def _duration(value: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=value.count, ns=value.ns)


def _statistics(version: ModelVersion) -> pb.ModelStatistics:
    stats = version.stats
    return pb.ModelStatistics(
        name=version.name,
        version=version.version_str,
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(stats.success),
            fail=_duration(stats.fail),
            queue=_duration(stats.queue),
            compute_input=_duration(stats.compute_input),
            compute_infer=_duration(stats.compute_infer),
            compute_output=_duration(stats.compute_output),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=rows,
                compute_input=_duration(batch.compute_input),
                compute_infer=_duration(batch.compute_infer),
                compute_output=_duration(batch.compute_output),
            )
            for rows, batch in sorted(stats.batches.items())
        ],
    )
