"""The exception hierarchy and the one table of what each error means on every frontend
(ARCHITECTURE.md §Errors).

Every class carries all there is to know about itself: its gRPC status, its HTTP status, Triton's failure
reason (how it is counted in statistics and metrics) and whether it is the client's fault
(a bad request says nothing about a version's health, so it is not counted against a canary). Code anywhere on
the request path raises one of these; each frontend turns it into its transport's status in one place, through
`status_of` / `http_status_of`.
"""

from __future__ import annotations

import asyncio
import enum

import grpc


class FailureReason(enum.Enum):
    """Triton's failure reasons (`nv_inference_request_failure{reason=...}`)."""

    REJECTED = "REJECTED"  # queue full, timed out in the queue, rate limited
    CANCELED = "CANCELED"  # the client went away
    BACKEND = "BACKEND"  # the model itself failed (ONNX Runtime)
    OTHER = "OTHER"  # everything else, a client's malformed request included


class HotwireError(Exception):
    """Base of every error the server reports to a client; the message is shown to the client as is."""

    status: grpc.StatusCode = grpc.StatusCode.INTERNAL
    http_status: int = 500
    reason: FailureReason = FailureReason.OTHER
    client_fault: bool = False


class InvalidInput(HotwireError):
    status = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 400
    client_fault = True


class NotFound(HotwireError):
    status = grpc.StatusCode.NOT_FOUND
    http_status = 404
    client_fault = True


class Unavailable(HotwireError):
    """Not ready, failed to load, or draining."""

    status = grpc.StatusCode.UNAVAILABLE
    http_status = 503


class FailedPrecondition(HotwireError):
    """The server is not in a state that allows the call (e.g. loading models outside explicit mode)."""

    status = grpc.StatusCode.FAILED_PRECONDITION
    http_status = 400  # Triton answers a disallowed load/unload with 400
    client_fault = True


class ResourceExhausted(HotwireError):
    """Queue full or rate limited: fail fast rather than queue without bound."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 429
    reason = FailureReason.REJECTED


class ResponseTooLarge(ResourceExhausted):
    """A response whose outputs would exceed --max-message-bytes: the request asks for too much (fewer rows or
    outputs), so over HTTP it is the client's 400, not the 429 that tells a client to retry later."""

    http_status = 400
    client_fault = True


class Overloaded(ResourceExhausted):
    """Refused before it queued (limits.py): over a rate limit or the in-flight cap. `retry_after_s` is sent
    as the `retry-after` hint (gRPC metadata, HTTP header) and gRPC's `grpc-retry-pushback-ms`."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RequestTooLarge(ResourceExhausted):
    """More tensors or rows in one request than the server takes (limits.py): retrying will not help, so no
    retry hint, and over HTTP it is the client's 400."""

    http_status = 400
    client_fault = True


class DeadlineExceeded(HotwireError):
    status = grpc.StatusCode.DEADLINE_EXCEEDED
    http_status = 504
    reason = FailureReason.REJECTED


class Shed(DeadlineExceeded):
    """Refused before it queued because the queue ahead outlasts its deadline (limits.py): the answer it
    would get anyway, without spending a queue slot and the work ahead on it first."""


class BackendError(HotwireError):
    """ONNX Runtime failed to run a batch (INTERNAL, with ORT's message)."""

    status = grpc.StatusCode.INTERNAL
    http_status = 500
    reason = FailureReason.BACKEND


class RequestsFailed(HotwireError):
    """Per-request preprocessing failed for some requests of a batch: `failures` maps their index in the batch
    to the error each one gets; the other requests did nothing wrong and can run without them."""

    def __init__(self, failures: dict[int, HotwireError], requests: int) -> None:
        first = failures[min(failures)]
        super().__init__(
            f"preprocessing failed for {len(failures)} of {requests} requests in the batch: {first}"
        )
        self.failures = failures


class PermissionDenied(HotwireError):
    """The caller may not make this call: its key's role is too low, an admin call from the network without
    --api-keys, or a browser's cross-origin request to the repository API."""

    status = grpc.StatusCode.PERMISSION_DENIED
    http_status = 403
    client_fault = True


class Unauthenticated(HotwireError):
    """No credentials, or a key the server does not know (auth.py)."""

    status = grpc.StatusCode.UNAUTHENTICATED
    http_status = 401
    client_fault = True


class PayloadTooLarge(HotwireError):
    """A request body over --max-message-bytes (before or after undoing its Content-Encoding)."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED
    http_status = 413
    client_fault = True


class UnsupportedMediaType(HotwireError):
    """A request body in a Content-Encoding hotwire cannot undo."""

    status = grpc.StatusCode.INVALID_ARGUMENT
    http_status = 415
    client_fault = True


class MethodNotAllowed(HotwireError):
    """An HTTP method the endpoint does not take (HTTP only: gRPC has no such case)."""

    status = grpc.StatusCode.UNIMPLEMENTED
    http_status = 405
    client_fault = True


class Unimplemented(HotwireError):
    status = grpc.StatusCode.UNIMPLEMENTED
    http_status = 501


class ModelLoadError(Exception):
    """A model (or one version) could not be loaded; never escapes to stop other models from serving."""


class ConfigError(Exception):
    """A server or model configuration is invalid; the message names the file and field."""


# Longest message a client gets back: messages echo client strings (names, values), and gRPC fails a call
# whose status message exceeds the metadata size limit (a 10k-character model name did).
MAX_MESSAGE_CHARS = 1000


def _bounded(message: str) -> str:
    if len(message) <= MAX_MESSAGE_CHARS:
        return message
    return message[: MAX_MESSAGE_CHARS - 20] + " ... (truncated)"


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and message a client sees for an exception raised while serving a request."""
    if isinstance(exc, HotwireError):
        return exc.status, _bounded(str(exc))
    return grpc.StatusCode.INTERNAL, _bounded(_internal(exc))


def http_status_of(exc: BaseException) -> tuple[int, str]:
    """The HTTP status and message a client sees for an exception raised while serving a request."""
    if isinstance(exc, HotwireError):
        return exc.http_status, _bounded(str(exc))
    return 500, _bounded(_internal(exc))


def failure_reason(exc: BaseException) -> FailureReason:
    """How a failed request is counted."""
    if isinstance(exc, HotwireError):
        return exc.reason
    if isinstance(exc, asyncio.CancelledError):
        return FailureReason.CANCELED
    return FailureReason.OTHER


def is_client_fault(exc: BaseException) -> bool:
    return isinstance(exc, HotwireError) and exc.client_fault


def _internal(exc: BaseException) -> str:
    return f"internal error: {type(exc).__name__}: {exc}"
