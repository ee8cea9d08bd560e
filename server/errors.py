"""The exception hierarchy and the one table mapping it to gRPC status codes (ARCHITECTURE.md §Errors).

Code anywhere on the request path raises one of these; `grpc_service` turns it into a status in one place.
"""

from __future__ import annotations

import grpc


class HotwireError(Exception):
    """Base of every error the server reports to a client; the message is shown to the client as is."""

    status: grpc.StatusCode = grpc.StatusCode.INTERNAL


class InvalidInput(HotwireError):
    status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(HotwireError):
    status = grpc.StatusCode.NOT_FOUND


class Unavailable(HotwireError):
    """Not ready, failed to load, or draining."""

    status = grpc.StatusCode.UNAVAILABLE


class FailedPrecondition(HotwireError):
    """The server is not in a state that allows the call (e.g. loading models outside explicit mode)."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(HotwireError):
    """Queue full or rate limited: fail fast rather than queue without bound."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(HotwireError):
    status = grpc.StatusCode.DEADLINE_EXCEEDED


class BackendError(HotwireError):
    """ONNX Runtime failed to run a batch (INTERNAL, with ORT's message)."""

    status = grpc.StatusCode.INTERNAL


class RequestsFailed(HotwireError):
    """Per-request preprocessing failed for some requests of a batch: `failures` maps their index in the batch to
    the error each one gets; the other requests did nothing wrong and can run without them."""

    def __init__(self, failures: dict[int, HotwireError], requests: int) -> None:
        first = failures[min(failures)]
        super().__init__(f"preprocessing failed for {len(failures)} of {requests} requests in the batch: {first}")
        self.failures = failures


class Unimplemented(HotwireError):
    status = grpc.StatusCode.UNIMPLEMENTED


class ModelLoadError(Exception):
    """A model (or one version) could not be loaded; never escapes to stop other models from serving."""


class ConfigError(Exception):
    """A server or model configuration is invalid; the message names the file and field."""


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a client sees for an exception raised while serving a request."""
    if isinstance(exc, HotwireError):
        return exc.status, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"
