"""Fallbacks and circuit breakers, per model (ARCHITECTURE.md §Fallbacks and circuit breakers).

A model's config parameters (model_config.fallback_parameters) may give it a fallback — another model, or a
constant response — and a circuit breaker. The data plane consults a model's `ModelGuard` only when the model
has one (the registry keeps `Registry.guards`, model name -> guard, for exactly those models), so a model with
neither pays nothing.

The breaker, per model and per process:

    CLOSED ──N failures in a row, or the error rate over the last W requests──▶ OPEN
    OPEN ──open_seconds later, the next request is the one probe──▶ HALF_OPEN
    HALF_OPEN ──the probe succeeds──▶ CLOSED        HALF_OPEN ──the probe fails──▶ OPEN

Only server-side failures count (errors.is_client_fault false: ONNX Runtime failing, UNAVAILABLE, a queue
timeout, a full queue); a client's bad request and a cancelled call say nothing about the model's health.
While it is OPEN (and while the probe is out), requests go to the fallback, or fail fast with UNAVAILABLE
naming the open breaker. A result that comes back after the state it was admitted in has changed (a request
admitted while CLOSED finishing after the breaker opened) is ignored: only the probe decides HALF_OPEN.

Everything here runs on the event loop: no locking.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hotwire.server.errors import ConfigError, HotwireError, Unavailable
from hotwire.server.metrics import BREAKER_STATES, GuardView
from hotwire.server.model_config import BreakerParameters, FallbackParameters, Signature, TensorSpec
from hotwire.server.validate import PlanCache, ValidRequest
from hotwire.server.wire import InferRequest

if TYPE_CHECKING:  # annotations only: the guard never builds a version
    from hotwire.server.model_version import ModelVersion

log = logging.getLogger(__name__)

# Response parameters of an answer the fallback gave (both frontends carry InferResponse.parameters).
FALLBACK_PARAMETER = "hotwire_fallback"  # "model:<name>" or "constant"
FALLBACK_VERSION_PARAMETER = "hotwire_fallback_version"  # the fallback model's version that answered
CAUSE_PARAMETER = "hotwire_fallback_cause"  # "breaker_open", or the model's error status (e.g. "INTERNAL")
BREAKER_PARAMETER = "hotwire_breaker"  # the breaker's state after this request: closed, open, half_open
BREAKER_OPEN_CAUSE = "breaker_open"
FALLBACK_KINDS = ("model", "constant")
_FAILED_FALLBACK_LOG_INTERVAL_S = 10.0  # a broken fallback logs once per interval, not once per request


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


assert BREAKER_STATES == tuple(state.value for state in BreakerState)  # the metrics' labels


class Admission(enum.Enum):
    """What the breaker says of one request before it runs."""

    PASS = "pass"  # closed: run it, its result counts
    PROBE = "probe"  # half-open: this one request tries the model; its result decides
    REJECT = "reject"  # open (or the probe is out): do not call the model


@dataclass
class GuardCounts:
    """A model's fallback and breaker counts; they outlive a reload (which builds a new guard), so the metrics
    never see them go down."""

    fallbacks: dict[str, int] = field(default_factory=dict)  # kind -> answers
    transitions: dict[str, int] = field(default_factory=dict)  # state entered -> times
    rejected: int = 0  # requests failed fast by an open breaker (no fallback, or the fallback failed)


class Breaker:
    def __init__(
        self,
        model: str,
        parameters: BreakerParameters,
        on_transition: Callable[[BreakerState], None] = lambda state: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.state = BreakerState.CLOSED
        self.opened_because = ""
        self._parameters = parameters
        self._on_transition = on_transition
        self._clock = clock
        self._consecutive = 0
        # the last `window` outcomes (True: failed), only when the error rate can open the breaker
        self._window: deque[bool] | None = deque(maxlen=parameters.window) if parameters.error_rate else None
        self._window_failures = 0
        self._open_until = 0.0
        self._probing = False

    def admit(self) -> Admission:
        state = self.state
        if state is BreakerState.CLOSED:
            return Admission.PASS
        if state is BreakerState.OPEN:
            if self._clock() < self._open_until:
                return Admission.REJECT
            self._move(BreakerState.HALF_OPEN)
        if self._probing:
            return Admission.REJECT
        self._probing = True
        return Admission.PROBE

    def record(self, admission: Admission, ok: bool | None) -> None:
        """The outcome of a request admitted as `admission`: ok True or False, or None when it says nothing of
        the model (a client's fault, a cancelled call): a probe that ends so leaves the next request to
        probe."""
        if admission is Admission.PROBE:
            self._probing = False
            if ok is None:
                return
            if ok:
                self._close()
            else:
                self._open("the half-open probe failed")
            return
        if ok is None or admission is not Admission.PASS or self.state is not BreakerState.CLOSED:
            return  # admitted before the breaker opened: stale, only the probe decides from here
        failed = not ok
        self._consecutive = self._consecutive + 1 if failed else 0
        threshold = self._parameters.consecutive_failures
        if threshold and self._consecutive >= threshold:
            self._open(f"{self._consecutive} consecutive failures")
            return
        window = self._window
        if window is not None:
            if len(window) == window.maxlen and window[0]:
                self._window_failures -= 1
            window.append(failed)
            self._window_failures += failed
            size = len(window)
            if size == window.maxlen and self._window_failures / size >= self._parameters.error_rate:
                self._open(f"{self._window_failures} of the last {size} requests failed")

    def retry_in(self) -> float:
        """Seconds until the next probe may go to the model (0 when one may now)."""
        return max(0.0, self._open_until - self._clock()) if self.state is BreakerState.OPEN else 0.0

    def _open(self, because: str) -> None:
        self.opened_because = because
        self._open_until = self._clock() + self._parameters.open_seconds
        self._move(BreakerState.OPEN)

    def _close(self) -> None:
        self._consecutive = 0
        self._window_failures = 0
        if self._window is not None:
            self._window.clear()
        self._move(BreakerState.CLOSED)

    def _move(self, to: BreakerState) -> None:
        self.state = to
        self._on_transition(to)


class ModelGuard:
    """One model's fallback and breaker, and the counts the metrics publish. Built by the registry at each
    load of the model (so a load starts the breaker CLOSED), dropped at its unload."""

    def __init__(
        self,
        model: str,
        parameters: FallbackParameters,
        counts: GuardCounts | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = model
        self.parameters = parameters
        self.counts = counts if counts is not None else GuardCounts()
        self.fallback_model = parameters.model
        self.fallback_version = parameters.model_version
        self.kind = "model" if parameters.model is not None else "constant" if parameters.response else None
        self.label = f"model:{parameters.model}" if parameters.model is not None else "constant"
        self.breaker = (
            Breaker(model, parameters.breaker, self._transition, clock)
            if parameters.breaker.enabled
            else None
        )
        # per version: its plan cache (requests the breaker keeps from the model are still validated against
        # it) and the constant response in its outputs' datatypes; built on first need
        self._prepared: dict[ModelVersion, tuple[PlanCache, dict[str, np.ndarray] | None]] = {}
        self._warned_at = -_FAILED_FALLBACK_LOG_INTERVAL_S

    @property
    def has_fallback(self) -> bool:
        return self.kind is not None

    def view(self) -> GuardView:
        return GuardView(
            self.model,
            self.kind,
            self.breaker.state.value if self.breaker is not None else None,
            dict(self.counts.fallbacks),
            dict(self.counts.transitions),
            self.counts.rejected,
        )

    def _prepare(self, version: ModelVersion) -> tuple[PlanCache, dict[str, np.ndarray] | None]:
        prepared = self._prepared.get(version)
        if prepared is None:
            constant = (
                constant_outputs(self.parameters, version.signature, self.model)
                if self.parameters.response is not None
                else None
            )
            prepared = self._prepared[version] = (PlanCache(version.signature, version.name), constant)
        return prepared

    def validate(self, version: ModelVersion, request: InferRequest) -> ValidRequest:
        """The request checked as the version would check it (InvalidInput), for requests the model is not
        asked: a bad request gets INVALID_ARGUMENT whatever the breaker's state."""
        return self._prepare(version)[0].validate(request)

    def constant(self, version: ModelVersion, valid: ValidRequest) -> tuple[list[str], list[np.ndarray]]:
        """The constant response for a validated request: the outputs it asks for, each row repeated for its
        batch size (read-only views: the encoders copy them once into the response)."""
        constant = self._prepare(version)[1]
        assert constant is not None
        names = list(valid.output_names)
        if not version.signature.batched:
            return names, [constant[name] for name in names]
        return names, [np.broadcast_to(constant[name], (valid.rows, *constant[name].shape)) for name in names]

    def parameters_for(self, cause: BaseException | None, fallback_version: str = "") -> dict[str, Any]:
        """The response parameters of an answer the fallback gave."""
        values: dict[str, Any] = {
            FALLBACK_PARAMETER: self.label,
            CAUSE_PARAMETER: BREAKER_OPEN_CAUSE if cause is None else cause_name(cause),
        }
        if fallback_version:
            values[FALLBACK_VERSION_PARAMETER] = fallback_version
        if self.breaker is not None:
            values[BREAKER_PARAMETER] = self.breaker.state.value
        return values

    def answered(self) -> None:
        assert self.kind is not None
        self.counts.fallbacks[self.kind] = self.counts.fallbacks.get(self.kind, 0) + 1

    def open_error(self, detail: str = "") -> Unavailable:
        """The fail-fast error of a request the open breaker keeps from the model; counted."""
        self.counts.rejected += 1
        breaker = self.breaker
        assert breaker is not None
        retry = breaker.retry_in()
        when = f"tried again in {retry:.3g} s" if retry else "being probed"
        return Unavailable(
            f"model '{self.model}': circuit breaker open ({breaker.opened_because}); "
            f"the model is {when}{detail}"
        )

    def fallback_failed(self, exc: BaseException, now: float | None = None) -> None:
        """A fallback that could not answer is a configuration or capacity problem worth a log line, not one
        per request."""
        now = time.monotonic() if now is None else now
        if now - self._warned_at < _FAILED_FALLBACK_LOG_INTERVAL_S:
            return
        self._warned_at = now
        log.warning(
            "model %s: its fallback (%s) could not answer: %s",
            self.model,
            self.label,
            exc,
            extra={"event": "fallback_failed", "model": self.model},
        )

    def _transition(self, to: BreakerState) -> None:
        self.counts.transitions[to.value] = self.counts.transitions.get(to.value, 0) + 1
        breaker = self.breaker
        if to is BreakerState.OPEN and breaker is not None:
            log.warning(
                "model %s: circuit breaker open (%s); requests go to %s for %.3g s",
                self.model,
                breaker.opened_because,
                self.label if self.has_fallback else "no model (failed fast)",
                self.parameters.breaker.open_seconds,
                extra={"event": "breaker_open", "model": self.model},
            )
        else:
            log.info(
                "model %s: circuit breaker %s",
                self.model,
                "half-open: one probe request goes to the model"
                if to is BreakerState.HALF_OPEN
                else "closed",
                extra={"event": f"breaker_{to.value}", "model": self.model},
            )


def cause_name(exc: BaseException) -> str:
    """How a response parameter names the failure a fallback answered for: its gRPC status name."""
    return exc.status.name if isinstance(exc, HotwireError) else "INTERNAL"


# ------------------------------------------------------------------------------------------------------------
# the constant response, checked against a version's outputs at its load


def constant_outputs(
    parameters: FallbackParameters, signature: Signature, model: str
) -> dict[str, np.ndarray]:
    """`fallback_response` as arrays in the outputs' datatypes: every output of the model, each one row of its
    dims for a batched model (given as the row, or as [row]), its whole shape otherwise. ConfigError naming
    the model, the parameter and the output that does not fit."""
    assert parameters.response is not None
    declared = dict(parameters.response)
    names = [spec.name for spec in signature.outputs]

    def error(message: str) -> ConfigError:
        return ConfigError(f"model '{model}': parameters 'fallback_response': {message}")

    unknown = [name for name in declared if name not in names]
    if unknown:
        raise error(f"no output(s) {unknown} in the model; its outputs are {names}")
    missing = [name for name in names if name not in declared]
    if missing:
        raise error(f"lacks output(s) {missing}: a constant response holds every output of the model")
    arrays = {}
    for spec in signature.outputs:
        try:
            arrays[spec.name] = _constant_array(spec, declared[spec.name], signature.batched)
        except ValueError as exc:
            raise error(f"output '{spec.name}': {exc}") from None
    return arrays


def _constant_array(spec: TensorSpec, value: Any, batched: bool) -> np.ndarray:
    shape = _nested_shape(value)
    dims = spec.dims
    if batched and len(shape) == len(dims) + 1 and shape[:1] == (1,):
        shape = shape[1:]  # the row given with its batch dimension
    fits = len(shape) == len(dims) and all(d in (-1, s) for s, d in zip(shape, dims))
    if not fits:
        what = "one row of shape" if batched else "shape"
        raise ValueError(
            f"shape {list(shape)}, expected {what} {list(dims)}"
            + (
                " (the batch dimension excluded: the row is repeated for each row of a request)"
                if batched
                else ""
            )
        )
    leaves = _leaves(value)
    dtype = spec.datatype
    if dtype.name == "BYTES":
        if not all(isinstance(v, str) for v in leaves):
            raise ValueError("BYTES elements must be JSON strings")
        array = np.array(leaves, dtype=object)
    elif dtype.name == "BOOL":
        if not all(isinstance(v, bool) for v in leaves):
            raise ValueError("BOOL elements must be true or false")
        array = np.array(leaves, dtype=dtype.numpy)
    elif dtype.numpy.kind in "iu":
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in leaves):
            raise ValueError(f"{dtype.name} elements must be JSON integers")
        info = np.iinfo(dtype.numpy)
        outside = [v for v in leaves if not info.min <= v <= info.max]
        if outside:
            raise ValueError(f"{outside[0]} is outside {dtype.name}'s {info.min}..{info.max}")
        array = np.array(leaves, dtype=dtype.numpy)
    else:
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in leaves):
            raise ValueError(f"{dtype.name} elements must be JSON numbers")
        array = np.array(leaves, dtype=dtype.numpy)
    array = array.reshape(shape)
    array.flags.writeable = False  # shared by every answer
    return array


def _nested_shape(value: Any) -> tuple[int, ...]:
    if not isinstance(value, list):
        return ()
    if not value:
        return (0,)
    shapes = {_nested_shape(item) for item in value}
    if len(shapes) != 1:
        raise ValueError("nested lists of unequal lengths (a tensor is rectangular)")
    return (len(value), *shapes.pop())


def _leaves(value: Any) -> list[Any]:
    if not isinstance(value, list):
        return [value]
    return [leaf for item in value for leaf in _leaves(item)]
