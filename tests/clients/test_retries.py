"""Retries are gRPC's retry policy, for idempotent calls only: a server on 127.0.0.1 answering UNAVAILABLE
twice and then OK sees three attempts of an inference or metadata call and one of a load."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import numpy as np
import pytest

from hotwire.clients import Client, Unavailable
from hotwire.proto import grpc_service_pb2 as pb

SERVICE = "inference.GRPCInferenceService"


class FlakyServer:
    """Every method answers UNAVAILABLE to its first `failures` calls, then OK; streams always fail."""

    def __init__(self, failures: int = 2) -> None:
        self.attempts: collections.Counter[str] = collections.Counter()
        self.failures = failures
        self.server = grpc.server(futures.ThreadPoolExecutor(4))
        handlers = {
            "ModelInfer": self._unary("ModelInfer", pb.ModelInferRequest, self._infer),
            "ModelMetadata": self._unary("ModelMetadata", pb.ModelMetadataRequest, self._metadata),
            "RepositoryModelLoad": self._unary(
                "RepositoryModelLoad",
                pb.RepositoryModelLoadRequest,
                lambda r: pb.RepositoryModelLoadResponse(),
            ),
            "ModelStreamInfer": grpc.stream_stream_rpc_method_handler(
                self._stream, pb.ModelInferRequest.FromString, pb.ModelStreamInferResponse.SerializeToString
            ),
        }
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def _unary(self, method: str, request_type: Any, answer: Any) -> Any:
        def handle(request: Any, context: grpc.ServicerContext) -> Any:
            self.attempts[method] += 1
            if self.attempts[method] <= self.failures:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"{method}: not yet")
            return answer(request)

        return grpc.unary_unary_rpc_method_handler(
            handle, request_type.FromString, lambda m: m.SerializeToString()
        )

    def _stream(self, requests: Iterator[Any], context: grpc.ServicerContext) -> Iterator[Any]:
        self.attempts["ModelStreamInfer"] += 1
        context.abort(grpc.StatusCode.UNAVAILABLE, "no streams here")
        yield from ()

    @staticmethod
    def _infer(request: pb.ModelInferRequest) -> pb.ModelInferResponse:
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1", id=request.id)
        response.outputs.add(name="y", datatype="FP32", shape=[1, 2])
        response.raw_output_contents.append(np.array([[1.5, 2.5]], np.float32).tobytes())
        return response

    @staticmethod
    def _metadata(request: pb.ModelMetadataRequest) -> pb.ModelMetadataResponse:
        return pb.ModelMetadataResponse(name=request.name, versions=["1"], platform="test")


@pytest.fixture
def flaky() -> Iterator[FlakyServer]:
    server = FlakyServer()
    yield server
    server.server.stop(None)


def test_idempotent_calls_are_retried_until_they_succeed(flaky):
    with Client(f"127.0.0.1:{flaky.port}", multiplex=False) as client:
        result = client.infer("m", {"x": np.ones((1, 2), np.float32)})
        np.testing.assert_array_equal(result["y"], [[1.5, 2.5]])
        assert client.model_metadata("m").platform == "test"
    assert flaky.attempts["ModelInfer"] == 3 and flaky.attempts["ModelMetadata"] == 3


def test_a_load_is_not_retried(flaky):
    with Client(f"127.0.0.1:{flaky.port}") as client, pytest.raises(Unavailable, match="not yet"):
        client.load_model("m")
    assert flaky.attempts["RepositoryModelLoad"] == 1


def test_retries_0_turns_retrying_off(flaky):
    with Client(f"127.0.0.1:{flaky.port}", multiplex=False, retries=0) as client:
        with pytest.raises(Unavailable):
            client.infer("m", {"x": np.ones((1, 2), np.float32)})
    assert flaky.attempts["ModelInfer"] == 1


def test_a_multiplexed_call_whose_stream_breaks_is_resent_unary_and_retried(flaky):
    with Client(f"127.0.0.1:{flaky.port}") as client:
        result = client.infer("m", {"x": np.ones((1, 2), np.float32)})
    np.testing.assert_array_equal(result["y"], [[1.5, 2.5]])
    assert flaky.attempts["ModelStreamInfer"] >= 1 and flaky.attempts["ModelInfer"] == 3
