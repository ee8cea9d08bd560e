"""Limits: what a model's config may ask of the server, and what a client may ask of it per request and per
second. One owner for each: `LoadLimits` and `BufferBudget` are applied by the loader, `AdmissionControl` by
the data plane to every inference request of every frontend, before it queues.

Structural caps are on by default, with values generous enough that the benchmarks never meet them
(SECURITY.md lists them); rate limits are off unless set. Every refusal is counted by reason
(`AdmissionControl.refused`, exported as `hotwire_requests_refused_total{reason}`).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

from hotwire.server.errors import ModelLoadError, Overloaded, RequestTooLarge, Shed

REFUSAL_REASONS = ("concurrency", "rate", "caller_rate", "tensors", "rows", "deadline")
# How long a client refused for concurrency is told to wait: the server's in-flight work turns over in well
# under this at any load it can serve.
CONCURRENCY_RETRY_S = 0.1
CALLER_BUCKETS = 4096  # per-caller buckets kept (least recently used dropped): bounded memory per peer churn


@dataclass(frozen=True)
class LoadLimits:
    """What one model's config may ask for: refused at load with a reason, before any memory is taken."""

    max_batch_size: int = 4096
    max_instances: int = 8  # per model, all instance groups together
    max_buffer_bytes: int = 1 << 30  # batch buffers of every loaded version together (BufferBudget)


class BufferBudget:
    """The batch-buffer bytes of every loaded version, against --max-buffer-bytes. Reserved at load (on the
    loader's thread), released when the version is unloaded."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        return self._used

    def reserve(self, nbytes: int, what: str) -> Reservation:
        with self._lock:
            if self._used + nbytes > self.limit:
                raise ModelLoadError(
                    f"{what} needs {nbytes / 2**20:.1f} MiB of batch buffers (instances x max_batch_size x "
                    f"row bytes of its inputs and outputs); {self._used / 2**20:.1f} MiB of the "
                    f"{self.limit / 2**20:.0f} MiB budget (--max-buffer-bytes) are taken: lower "
                    "max_batch_size or the instance count, or raise the budget"
                )
            self._used += nbytes
        return Reservation(self, nbytes)

    def _release(self, nbytes: int) -> None:
        with self._lock:
            self._used -= nbytes


class Reservation:
    """Bytes held in a BufferBudget; `release` is idempotent."""

    def __init__(self, budget: BufferBudget | None = None, nbytes: int = 0) -> None:
        self._budget = budget
        self.nbytes = nbytes

    def release(self) -> None:
        if self._budget is not None:
            self._budget._release(self.nbytes)
            self._budget = None


@dataclass(frozen=True)
class RequestLimits:
    max_inflight: int = 4096  # inference requests in flight in this process, every frontend together
    max_request_tensors: int = 256  # inputs plus requested outputs
    max_request_rows: int = 1 << 20  # the first dimension of any input
    rate: float = 0.0  # requests per second for the whole process; 0: no limit
    burst: float = 0.0  # bucket size; 0: max(1, rate)
    caller_rate: float = 0.0  # requests per second per API key (per peer address without keys); 0: none
    caller_burst: float = 0.0


class Shaped(Protocol):
    """What admission reads of an input tensor (wire.InputTensor)."""

    @property
    def shape(self) -> tuple[int, ...]: ...


class TokenBucket:
    """`rate` tokens a second, at most `burst` saved."""

    __slots__ = ("_rate", "_burst", "_tokens", "_at")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = burst if burst > 0 else max(1.0, rate)
        self._tokens = self._burst
        self._at = now

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one will be there."""
        self._tokens = min(self._burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return 0.0
        return (1 - self._tokens) / self._rate


class AdmissionControl:
    """Per inference request: the size caps, the in-flight cap, the rate limits, and the deadline check.
    Lives on the event loop (no locks)."""

    def __init__(self, limits: RequestLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self.inflight = 0
        self.refused: dict[str, int] = dict.fromkeys(REFUSAL_REASONS, 0)
        self._bucket = TokenBucket(limits.rate, limits.burst, self._clock()) if limits.rate > 0 else None
        self._callers: OrderedDict[Hashable, TokenBucket] = OrderedDict()
        self.per_caller = limits.caller_rate > 0  # frontends pass a caller only when this is set

    def enter(self, inputs: Sequence[Shaped], outputs: int, caller: Hashable | None = None) -> None:
        """Admit one request (its input tensors, its number of requested outputs) or raise; an admitted one
        must `leave`."""
        limits = self.limits
        if len(inputs) + outputs > limits.max_request_tensors:
            self._refuse("tensors")
            raise RequestTooLarge(
                f"the request has {len(inputs)} inputs and {outputs} requested outputs, over the server's "
                f"{limits.max_request_tensors} tensors per request (--max-request-tensors)"
            )
        for tensor in inputs:
            if tensor.shape and tensor.shape[0] > limits.max_request_rows:
                self._refuse("rows")
                raise RequestTooLarge(
                    f"an input has {tensor.shape[0]} rows, over the server's {limits.max_request_rows} per "
                    "request (--max-request-rows): split the request"
                )
        if self.inflight >= limits.max_inflight:
            self._refuse("concurrency")
            raise Overloaded(
                f"the server has {self.inflight} requests in flight, its limit (--max-inflight)",
                CONCURRENCY_RETRY_S,
            )
        if self._bucket is not None or self.per_caller:
            self._take_tokens(caller)
        self.inflight += 1

    def leave(self) -> None:
        self.inflight -= 1

    def _take_tokens(self, caller: Hashable | None) -> None:
        now = self._clock()
        if self._bucket is not None:
            wait = self._bucket.take(now)
            if wait:
                self._refuse("rate")
                raise Overloaded(
                    f"rate limited: the server takes {self.limits.rate:g} requests per second (--rate-limit)",
                    wait,
                )
        if self.per_caller and caller is not None:
            bucket = self._callers.get(caller)
            if bucket is None:
                bucket = TokenBucket(self.limits.caller_rate, self.limits.caller_burst, now)
                self._callers[caller] = bucket
                if len(self._callers) > CALLER_BUCKETS:
                    self._callers.popitem(last=False)
            else:
                self._callers.move_to_end(caller)
            wait = bucket.take(now)
            if wait:
                self._refuse("caller_rate")
                raise Overloaded(
                    f"rate limited: {self.limits.caller_rate:g} requests per second per caller "
                    "(--caller-rate-limit)",
                    wait,
                )

    def check_deadline(self, model: str, expected_wait_s: float, remaining_s: float) -> None:
        """Shed a request whose deadline comes before the queue ahead of it is served: it would time out
        holding a queue slot, after the work ahead of it was spent."""
        if expected_wait_s > remaining_s:
            self._refuse("deadline")
            raise Shed(
                f"model '{model}': shed: the queue ahead needs about {expected_wait_s * 1e3:.0f} ms, more "
                f"than the {max(0.0, remaining_s) * 1e3:.0f} ms left to the request's deadline"
            )

    def _refuse(self, reason: str) -> None:
        self.refused[reason] += 1


def retry_after_header(seconds: float) -> str:
    """HTTP's Retry-After and the gRPC `retry-after` metadata: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
