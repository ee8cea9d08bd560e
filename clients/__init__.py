"""hotwire's Python client for any Open Inference Protocol (KServe V2) gRPC server: Triton, MLServer, KServe,
hotwire.

    from hotwire.clients import Client
    result = Client("localhost:8001").infer("classifier", {"input": x})

`Client` blocks, `AsyncClient` is asyncio's; both take the same arguments and have the same methods. Importing
this package imports grpcio, protobuf and numpy only: no server code, ONNX Runtime or numba.
"""

from hotwire.clients.aio import AsyncClient
from hotwire.clients.client import DEFAULT_TIMEOUT_S, Client
from hotwire.clients.errors import (
    DeadlineExceeded,
    InferenceServerError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ServerError,
    Unauthenticated,
    Unavailable,
)
from hotwire.clients.protocol import (
    AdminResult,
    ModelMetadata,
    RepositoryModel,
    ServerMetadata,
    StreamRequest,
    TensorMetadata,
)
from hotwire.clients.stream import StreamResponse
from hotwire.clients.tensors import DATATYPES, InferResult

__all__ = [
    "DATATYPES",
    "DEFAULT_TIMEOUT_S",
    "AdminResult",
    "AsyncClient",
    "Client",
    "DeadlineExceeded",
    "InferResult",
    "InferenceServerError",
    "InvalidInput",
    "ModelMetadata",
    "NotFound",
    "PermissionDenied",
    "RepositoryModel",
    "ResourceExhausted",
    "ServerError",
    "ServerMetadata",
    "StreamRequest",
    "StreamResponse",
    "TensorMetadata",
    "Unauthenticated",
    "Unavailable",
]
