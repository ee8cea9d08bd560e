"""The client's exceptions: one class per family of gRPC status, each carrying the server's own message.

Catch `InferenceServerError` for everything a server (or the transport) reports; catch a family to act on it:
`Unavailable` and `ResourceExhausted` are worth retrying later, `InvalidInput` never is.
"""

from __future__ import annotations

import grpc

__all__ = [
    "DeadlineExceeded",
    "InferenceServerError",
    "InvalidInput",
    "NotFound",
    "PermissionDenied",
    "ResourceExhausted",
    "ServerError",
    "Unauthenticated",
    "Unavailable",
    "error_from_rpc",
    "error_from_status",
]


class InferenceServerError(Exception):
    """Base of every error the client raises for a call; `status` is the gRPC status name ("NOT_FOUND"),
    `message` the server's text as it sent it."""

    def __init__(self, message: str, status: str = "UNKNOWN") -> None:
        super().__init__(f"{status}: {message}" if message else status)
        self.message = message
        self.status = status


class InvalidInput(InferenceServerError):
    """INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE, ALREADY_EXISTS: the request is wrong (a tensor's
    name, datatype or shape, or a call the server's mode does not allow); resending it will not help. Also
    raised before sending, by generated clients' checks."""


class NotFound(InferenceServerError):
    """NOT_FOUND: no such model or version."""


class Unavailable(InferenceServerError):
    """UNAVAILABLE: not ready, draining or unreachable. Idempotent calls were already retried with backoff."""


class ResourceExhausted(InferenceServerError):
    """RESOURCE_EXHAUSTED: rate limited, over a queue or size limit. `retry_after_s` is the server's hint
    (its `retry-after` trailer), when it gave one."""

    def __init__(self, message: str, status: str = "RESOURCE_EXHAUSTED", retry_after_s: float | None = None):
        super().__init__(message, status)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(InferenceServerError):
    """DEADLINE_EXCEEDED, or CANCELLED: the call's deadline passed (client side or server side)."""


class Unauthenticated(InferenceServerError):
    """UNAUTHENTICATED: no key, or a key the server does not know."""


class PermissionDenied(InferenceServerError):
    """PERMISSION_DENIED: the key's role does not allow the call (an infer key calling an admin method)."""


class ServerError(InferenceServerError):
    """INTERNAL, UNKNOWN, UNIMPLEMENTED, DATA_LOSS, ABORTED: the server failed, or lacks the method."""


_FAMILIES: dict[str, type[InferenceServerError]] = {
    "INVALID_ARGUMENT": InvalidInput,
    "FAILED_PRECONDITION": InvalidInput,
    "OUT_OF_RANGE": InvalidInput,
    "ALREADY_EXISTS": InvalidInput,
    "NOT_FOUND": NotFound,
    "UNAVAILABLE": Unavailable,
    "RESOURCE_EXHAUSTED": ResourceExhausted,
    "DEADLINE_EXCEEDED": DeadlineExceeded,
    "CANCELLED": DeadlineExceeded,
    "UNAUTHENTICATED": Unauthenticated,
    "PERMISSION_DENIED": PermissionDenied,
}


def error_from_status(status: str, message: str) -> InferenceServerError:
    """The exception for a gRPC status name (unknown names, UNKNOWN included, are ServerError)."""
    return _FAMILIES.get(status, ServerError)(message, status)


def error_from_rpc(error: grpc.RpcError) -> InferenceServerError:
    """The exception for a failed gRPC call (sync or asyncio)."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    details = error.details() if callable(getattr(error, "details", None)) else str(error)
    status = code.name if isinstance(code, grpc.StatusCode) else "UNKNOWN"
    exc = error_from_status(status, details or "")
    if isinstance(exc, ResourceExhausted):
        trailers = error.trailing_metadata() if callable(getattr(error, "trailing_metadata", None)) else None
        for key, value in trailers or ():
            if key == "retry-after":
                try:
                    exc.retry_after_s = float(value)
                except ValueError:
                    pass
    return exc
