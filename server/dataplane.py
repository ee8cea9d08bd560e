"""The transport-neutral data plane: every frontend (gRPC, HTTP/REST) calls this, and only translates.

It owns the whole inference sequence — route, validate and run (ModelVersion.infer), encode (through the
frontend's encoder, so its time is counted), and the accounting after it: the handler duration in the
version's statistics, the canary guard, the shadow mirror and the drift monitor (the registry's post-response
hook), and the request log — for a unary call and for each message of a stream alike. The other protocol calls
(health, metadata, config, statistics, repository) answer with the protocol's messages, which each frontend
serializes its own way. Cross-cutting policy for every frontend (authentication, rate limits, fallbacks)
attaches here.

Fallbacks and circuit breakers (fallback.py) take the guarded path, for models that configure either; every
other model's request costs one truthiness check of the guards dict more than it would without them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from importlib import metadata
from typing import Any, TypeVar

import numpy as np

from hotwire.proto import grpc_service_pb2 as pb
from hotwire.proto import model_config_pb2 as mc
from hotwire.server.errors import (
    FailureReason,
    HotwireError,
    NotFound,
    ResponseTooLarge,
    Unavailable,
    is_client_fault,
)
from hotwire.server.fallback import Admission, ModelGuard
from hotwire.server.limits import AdmissionControl, RequestLimits
from hotwire.server.logs import RequestLogger
from hotwire.server.model_control import AdminResult, ModelControl
from hotwire.server.model_version import ModelVersion
from hotwire.server.registry import Registry
from hotwire.server.repository import shown
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
        admission: AdmissionControl | None = None,
    ) -> None:
        self._registry = registry
        self.admission = admission or AdmissionControl(RequestLimits())  # limits.py: caps, rates, shedding
        self._control = control
        self._is_ready = is_ready
        self._request_logger = request_logger or RequestLogger()
        self._max_response_bytes = max_response_bytes  # --max-message-bytes, the same for every frontend
        # The registry's dict itself (mutated in place, never rebound): model name -> guard, only for models
        # with a fallback or a breaker, so an empty one keeps every request on the fast path.
        self._guards = registry.guards
        self.extensions = [e for e in EXTENSIONS if exact_statistics or e != "statistics"]

    # ----- inference ----------------------------------------------------------------------------------------

    async def infer(
        self,
        request: InferRequest,
        received: float,
        encode: Encoder[Encoded],
        caller: Hashable | None = None,
        time_left: Callable[[], float | None] | None = None,
    ) -> Encoded:
        """Serve one decoded request (`received`: perf_counter when its bytes arrived) and return what
        `encode` makes of the response. Errors propagate as they are, for the frontend to map.

        Admission first (limits.py): `caller` (an API key's index, or the peer's address) for per-caller
        rates, when `admission.per_caller`; `time_left`: the seconds left to the client's deadline (None:
        none), asked only when the version has a queue to weigh it against."""
        gate = self.admission
        gate.enter(request.inputs, len(request.requested_outputs or ()), caller)
        try:
            if self._guards:
                guard = self._guards.get(request.model_name)
                if guard is not None:
                    return await self._infer_guarded(guard, request, received, encode, time_left)
            # the fast path, in this one coroutine (no nested one per request)
            version = self._registry.route(request.model_name, request.model_version, request)
            if time_left is not None and version.batcher.queued:
                self._shed(version, time_left)
            routed = time.perf_counter()
            try:
                response = await version.infer(request, self._max_response_bytes)
            except Exception as exc:  # a cancelled call (BaseException) is not held against the version
                if not is_client_fault(exc):  # a bad request says nothing about the version's health
                    failed_after = time.perf_counter() - received
                    self._registry.after_response(version, request, None, failed_after, False)
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
                # validation, the hand-offs to and from the instance thread, output slicing: the stages add up
                stages["other"] = max(0.0, elapsed - sum(stages.values()))
                self._request_logger.observe(version.name, version.version_str, request.id, elapsed, stages)
            return encoded
        finally:
            gate.leave()

    def _shed(self, version: ModelVersion, time_left: Callable[[], float | None]) -> None:
        left = time_left()
        if left is not None:
            self.admission.check_deadline(version.name, version.batcher.expected_wait_s(), left)

    async def _infer_guarded(
        self,
        guard: ModelGuard,
        request: InferRequest,
        received: float,
        encode: Encoder[Encoded],
        time_left: Callable[[], float | None] | None,
    ) -> Encoded:
        """`infer` for a model with a fallback or a circuit breaker: the breaker admits the request or keeps
        it from the model; a server-side failure (never a client's fault) or an open breaker gets the
        fallback's answer, marked in the response parameters."""
        version = self._registry.route(request.model_name, request.model_version, request)
        if time_left is not None and version.batcher.queued:
            self._shed(version, time_left)
        breaker = guard.breaker
        admission = breaker.admit() if breaker is not None else Admission.PASS
        if admission is Admission.REJECT:
            guard.validate(version, request)  # a bad request is INVALID_ARGUMENT, open breaker or not
            if not guard.has_fallback:
                raise guard.open_error()
            return await self._fallback(guard, version, request, received, encode, None)
        routed = time.perf_counter()
        try:
            response = await version.infer(request, self._max_response_bytes)
        except Exception as exc:
            if is_client_fault(exc):
                if breaker is not None:
                    breaker.record(admission, None)
                raise
            self._registry.after_response(version, request, None, time.perf_counter() - received, False)
            if breaker is not None:
                breaker.record(admission, False)
            if not guard.has_fallback:
                raise
            return await self._fallback(guard, version, request, received, encode, exc)
        except BaseException:
            # cancelled: says nothing of the model (a probe so ended leaves the next request to probe)
            if breaker is not None:
                breaker.record(admission, None)
            raise
        if breaker is not None:
            breaker.record(admission, True)
        # the fast path's accounting, repeated rather than shared: `infer` pays no extra call for it
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
            stages["other"] = max(0.0, elapsed - sum(stages.values()))
            self._request_logger.observe(version.name, version.version_str, request.id, elapsed, stages)
        return encoded

    async def _fallback(
        self,
        guard: ModelGuard,
        version: ModelVersion,
        request: InferRequest,
        received: float,
        encode: Encoder[Encoded],
        cause: Exception | None,
    ) -> Encoded:
        """The fallback's answer for a request the model failed (`cause`) or the open breaker kept from it
        (None). When the fallback cannot answer either, the client gets the model's own error, or UNAVAILABLE
        naming the open breaker."""
        started = time.perf_counter()
        try:
            response, fallback_version = await self._fallback_response(guard, version, request)
        except ResponseTooLarge:
            raise  # the request asks for more than a response may hold: the client's to fix
        except Exception as exc:
            guard.fallback_failed(exc)
            if cause is not None:
                raise cause  # keeps its own __cause__ (ORT's exception, say)
            raise guard.open_error(f"; its fallback {guard.label} failed: {exc}") from None
        guard.answered()
        response.parameters = guard.parameters_for(cause, fallback_version)
        answered = time.perf_counter()
        encoded = encode(version, response)
        if self._request_logger.enabled:
            done = time.perf_counter()
            elapsed = done - received
            stages = {"fallback": answered - started, "encode": done - answered}
            stages["other"] = max(0.0, elapsed - sum(stages.values()))
            self._request_logger.observe(version.name, version.version_str, request.id, elapsed, stages)
        return encoded

    async def _fallback_response(
        self, guard: ModelGuard, version: ModelVersion, request: InferRequest
    ) -> tuple[InferResponse, str]:
        """(the fallback's response in the name of `version`, the fallback model's version or "")."""
        if guard.fallback_model is None:
            valid = guard.validate(version, request)
            names, outputs = guard.constant(version, valid)
            limit = self._max_response_bytes
            if limit:
                produced = sum(_payload_bytes(output) for output in outputs)
                if produced > limit:
                    raise ResponseTooLarge(
                        f"model '{version.name}': the response would hold {produced} bytes of outputs, over "
                        f"the {limit}-byte message limit (--max-message-bytes); request fewer rows or outputs"
                    )
            return InferResponse(version.name, version.version_str, request.id, names, outputs), ""
        response = await self._ask_fallback_model(guard, request)
        answered_by = response.model_version
        # the response names the model the client asked for, as every response does; the parameters say which
        # model answered
        response.model_name, response.model_version = version.name, version.version_str
        return response, answered_by

    async def _ask_fallback_model(self, guard: ModelGuard, request: InferRequest) -> InferResponse:
        """The fallback model's own answer. Its breaker (if it has one) is honoured and fed; its own fallback
        is never followed, so A -> B -> A cannot loop."""
        assert guard.fallback_model is not None
        target = self._registry.route(guard.fallback_model, guard.fallback_version, request)
        other = self._guards.get(target.name)
        breaker = other.breaker if other is not None else None
        admission = breaker.admit() if breaker is not None else Admission.PASS
        if admission is Admission.REJECT:
            assert other is not None
            raise other.open_error()
        try:
            response = await target.infer(request, self._max_response_bytes)
        except BaseException as exc:
            if breaker is not None:
                client_fault = not isinstance(exc, Exception) or is_client_fault(exc)
                breaker.record(admission, None if client_fault else False)
            raise
        if breaker is not None:
            breaker.record(admission, True)
        return response

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
            raise NotFound(f"model '{name}' has no version {shown(version)} loaded")
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


def _payload_bytes(output: np.ndarray) -> int:
    """An output's bytes on the wire (BYTES: each element's UTF-8 and its 4-byte length), as ModelVersion
    measures its own."""
    if output.dtype.kind != "O":
        return int(output.nbytes)
    return sum(4 + len(e.encode() if isinstance(e, str) else e) for e in output.reshape(-1))


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
