"""One loaded model version and its lifecycle: the only module that writes a version's state.

    LOADING ──serve()──▶ READY ◀──serve()── STANDBY
       │                  │  └──stand_by()──▶ │
       └──────────────────┴──drain()──────────┴──▶ DRAINING ──unload()──▶ UNLOADED

A version is built complete by the loader (sessions, batcher, statistics, fingerprint) and starts in LOADING;
the registry moves it with these methods only. READY versions take traffic (stable, canary or shadow) and
pinned requests; STANDBY ones are superseded but kept warm, so a rollback flips to them at once, and still
serve pinned requests; DRAINING ones take nothing new and finish what they hold; UNLOADED ones have released
their sessions. A load that fails leaves no version behind (the registry records the reason per model), so
there is no FAILED.
"""

from __future__ import annotations

import asyncio
import enum
import time

import numpy as np

from hotwire.proto import model_config_pb2 as mc
from hotwire.server.batcher import Batcher
from hotwire.server.drift import DriftMonitor, DriftReport
from hotwire.server.errors import ResponseTooLarge, failure_reason
from hotwire.server.limits import Reservation
from hotwire.server.model_config import Signature
from hotwire.server.preprocess import Preprocessor
from hotwire.server.runner import Instance
from hotwire.server.stats import ComputeTimes, VersionStats
from hotwire.server.validate import PlanCache
from hotwire.server.wire import InferRequest, InferResponse, ResponseEncoder


class VersionState(enum.Enum):
    LOADING = "LOADING"
    READY = "READY"
    STANDBY = "STANDBY"
    DRAINING = "DRAINING"
    UNLOADED = "UNLOADED"


SERVING_STATES = frozenset({VersionState.READY, VersionState.STANDBY})
_ALLOWED: dict[VersionState, frozenset[VersionState]] = {
    VersionState.LOADING: frozenset({VersionState.READY, VersionState.DRAINING}),
    VersionState.READY: frozenset({VersionState.READY, VersionState.STANDBY, VersionState.DRAINING}),
    VersionState.STANDBY: frozenset({VersionState.READY, VersionState.STANDBY, VersionState.DRAINING}),
    VersionState.DRAINING: frozenset({VersionState.DRAINING, VersionState.UNLOADED}),
    VersionState.UNLOADED: frozenset({VersionState.UNLOADED}),
}


class ModelVersion:
    """One loaded version: owns its signature, batcher, instances, statistics and in-flight count."""

    def __init__(
        self,
        name: str,
        version: int,
        config: mc.ModelConfig,
        signature: Signature,
        instances: list[Instance],
        batcher: Batcher,
        stats: VersionStats,
        *,
        preprocessor: Preprocessor | None = None,
        drift: DriftMonitor | None = None,
        fingerprint: tuple = (),
        load_seconds: float = 0.0,
        buffers: Reservation | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.version_str = str(version)
        self.config = config
        self.signature = signature
        self.instances = instances
        self.batcher = batcher
        self.stats = stats
        self.drift = drift  # input/prediction drift monitoring, when the model asks for it
        self.fingerprint = fingerprint  # what it was loaded from: an unchanged reload keeps it
        self.load_seconds = load_seconds
        self._buffers = buffers or Reservation()  # its share of --max-buffer-bytes, released at unload
        self.encoder = ResponseEncoder(name, self.version_str)
        self._state = VersionState.LOADING
        self._drift_report: DriftReport | None = None
        self._inflight = 0
        self._idle = asyncio.Event()  # set while no request is between routing and its result
        self._idle.set()
        self._plans = PlanCache(signature, name, preprocessor.check if preprocessor is not None else None)

    # ----- state -------------------------------------------------------------------------------------------

    @property
    def state(self) -> VersionState:
        return self._state

    @property
    def serving(self) -> bool:
        return self._state in SERVING_STATES

    @property
    def inflight(self) -> int:
        return self._inflight

    @property
    def drift_report(self) -> DriftReport | None:
        """The latest drift report, computed off the request path by `refresh_drift`."""
        return self._drift_report

    def _move(self, to: VersionState) -> None:
        if to not in _ALLOWED[self._state]:
            raise RuntimeError(
                f"model {self.name} version {self.version}: no transition {self._state.value} -> {to.value}"
            )
        self._state = to

    def serve(self) -> None:
        """Take traffic (from LOADING, or back from STANDBY)."""
        self._move(VersionState.READY)

    def stand_by(self) -> None:
        """Superseded, but kept loaded and warm for an instant rollback."""
        self._move(VersionState.STANDBY)

    def drain(self) -> None:
        """Take nothing new; what it holds finishes (`unload` then releases it)."""
        self._move(VersionState.DRAINING)

    async def unload(self) -> None:
        """Drain (queued and running requests finish here), then release the sessions once in-flight is 0."""
        if self._state is VersionState.UNLOADED:
            return
        self.drain()
        await self.batcher.close()
        await self._idle.wait()  # requests between routing and their result (e.g. awaiting a future)
        for instance in self.instances:
            await asyncio.to_thread(instance.close)
        self._buffers.release()
        self._move(VersionState.UNLOADED)

    async def refresh_drift(self) -> None:
        if self.drift is not None:
            self._drift_report = await asyncio.to_thread(self.drift.compute)

    def _too_large(self, size: int, limit: int) -> ResponseTooLarge:
        return ResponseTooLarge(
            f"model '{self.name}': the response would hold {size} bytes of outputs, over the {limit}-byte "
            "message limit (--max-message-bytes); request fewer rows or outputs"
        )

    # ----- serving -----------------------------------------------------------------------------------------

    async def infer(self, request: InferRequest, max_response_bytes: int = 0) -> InferResponse:
        """Validate, run (inline or through the batcher), and count the request in this version's statistics.

        `max_response_bytes` (0: no limit): a response whose outputs would exceed it is RESOURCE_EXHAUSTED,
        before compute when the config and the input shapes fix the output sizes, after it otherwise."""
        started = time.monotonic()
        self._inflight += 1
        self._idle.clear()
        queue_s = 0.0
        times = ComputeTimes()
        try:
            valid = self._plans.validate(request)
            bound = valid.response_bytes
            if max_response_bytes and bound is not None and bound > max_response_bytes:
                raise self._too_large(bound, max_response_bytes)
            done = self.batcher.run_now(valid.feeds, valid.rows, valid.output_names)
            if done is not None:
                outputs, times = done
            else:
                item = self.batcher.submit(
                    valid.feeds,
                    valid.rows,
                    valid.shape_key,
                    valid.output_names,
                    valid.priority,
                    valid.timeout_us,
                )
                try:
                    outputs = await item.future
                finally:
                    if item.batched_at is not None:
                        queue_s = item.batched_at - item.pending.enqueued_at
                    times = item.times
            if max_response_bytes and bound is None:
                produced = sum(_payload_bytes(output) for output in outputs)
                if produced > max_response_bytes:
                    raise self._too_large(produced, max_response_bytes)
        except BaseException as exc:
            self.stats.record_request(False, time.monotonic() - started, queue_s, times, failure_reason(exc))
            raise
        finally:
            self._inflight -= 1
            if not self._inflight:
                self._idle.set()
        self.stats.record_request(True, time.monotonic() - started, queue_s, times)
        return InferResponse(
            self.name,
            self.version_str,
            request.id,
            list(valid.output_names),
            outputs,
            queue_s=queue_s,
            compute_input_s=times.input_s,
            compute_infer_s=times.infer_s,
        )


def _payload_bytes(output: np.ndarray) -> int:
    """An output's bytes on the wire (BYTES: each element's UTF-8 and its 4-byte length)."""
    if output.dtype.kind != "O":
        return int(output.nbytes)
    return sum(4 + len(e.encode() if isinstance(e, str) else e) for e in output.reshape(-1))
