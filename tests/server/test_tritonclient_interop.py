"""NVIDIA's own client (tritonclient[grpc] 2.41.0) against a real hotwire server: the wire-compatibility
contract.

Also the standard gRPC health and reflection services, as grpc_health_probe / grpcurl / Kubernetes use them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as tc
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.utils import InferenceServerException

from hotwire.proto import grpc_service_pb2 as pb
from onnx_models import (
    ONNX_TYPES,
    SIMPLE_CONFIG,
    add_sub,
    identity_all_types,
    ort_reference,
    simple_inputs,
    write_model,
)
from server_harness import ServerThread

SIMPLE = add_sub()
IDENTITY = identity_all_types(dims=(3,))
DATATYPES = list(ONNX_TYPES)
NUMPY = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
    "UINT32": np.uint32,
    "UINT64": np.uint64,
    "INT8": np.int8,
    "INT16": np.int16,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
    "BYTES": np.object_,
}
TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root: Path = tmp_path_factory.mktemp("interop_repo")
    write_model(root, "simple", SIMPLE, config=SIMPLE_CONFIG)
    write_model(root, "identity", IDENTITY)
    thread = ServerThread(root).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[tc.InferenceServerClient]:
    triton = tc.InferenceServerClient(server.address)
    yield triton
    triton.close()


@pytest.fixture(scope="module")
def channel(server: ServerThread) -> Iterator[grpc.Channel]:
    ch = grpc.insecure_channel(server.address)
    yield ch
    ch.close()


def triton_inputs(
    arrays: dict[str, np.ndarray], datatypes: dict[str, str] | None = None
) -> list[tc.InferInput]:
    inputs = []
    for name, array in arrays.items():
        datatype = (datatypes or {}).get(name, "FP32")
        tensor = tc.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def assert_result(result: tc.InferResult, expected: dict[str, np.ndarray]) -> None:
    for name, want in expected.items():
        got = result.as_numpy(name)
        assert got is not None, name
        assert got.shape == want.shape, name
        if want.dtype == object:
            assert got.tolist() == want.tolist(), name
        else:
            assert got.dtype == want.dtype, name
            np.testing.assert_array_equal(got, want, err_msg=name)


# ------------------------------------------------------------------------------------------------------------
# health, metadata, config


def test_server_and_model_readiness(client) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    assert client.is_model_ready("simple", "1")
    assert client.is_model_ready("identity")
    assert not client.is_model_ready("no_such_model")
    assert not client.is_model_ready("simple", "2")


def test_server_metadata(client) -> None:
    metadata = client.get_server_metadata()
    assert metadata.name == "hotwire"
    assert metadata.version
    assert "model_configuration" in list(metadata.extensions)
    as_json = client.get_server_metadata(as_json=True)
    assert as_json["name"] == "hotwire"
    assert "model_configuration" in as_json["extensions"]


def test_model_metadata_simple(client) -> None:
    metadata = client.get_model_metadata("simple")
    assert metadata.name == "simple"
    assert list(metadata.versions) == ["1"]
    assert metadata.platform == "onnxruntime_onnx"
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("INPUT0", "FP32", [-1, 16]),
        ("INPUT1", "FP32", [-1, 16]),
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("OUTPUT0", "FP32", [-1, 16]),
        ("OUTPUT1", "FP32", [-1, 16]),
    ]
    as_json = client.get_model_metadata("simple", as_json=True)
    assert as_json["name"] == "simple"
    assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in as_json["inputs"]] == [
        ("INPUT0", "FP32", [-1, 16]),
        ("INPUT1", "FP32", [-1, 16]),
    ]


def test_model_metadata_every_datatype(client) -> None:
    metadata = client.get_model_metadata("identity", model_version="1")
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        (f"in_{d}", d, [-1, 3]) for d in DATATYPES
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        (f"out_{d}", d, [-1, 3]) for d in DATATYPES
    ]


def test_model_config(client) -> None:
    config = client.get_model_config("simple").config
    assert config.name == "simple"
    assert config.max_batch_size == 8
    assert [(t.name, list(t.dims)) for t in config.input] == [("INPUT0", [16]), ("INPUT1", [16])]
    assert [(t.name, list(t.dims)) for t in config.output] == [("OUTPUT0", [16]), ("OUTPUT1", [16])]
    assert config.HasField("dynamic_batching")
    assert [(g.count, g.kind) for g in config.instance_group] == [(1, 2)]  # KIND_CPU
    as_json = client.get_model_config("simple", as_json=True)["config"]
    assert as_json["name"] == "simple"
    assert int(as_json["max_batch_size"]) == 8
    assert [(t["name"], t["data_type"], [int(d) for d in t["dims"]]) for t in as_json["input"]] == [
        ("INPUT0", "TYPE_FP32", [16]),
        ("INPUT1", "TYPE_FP32", [16]),
    ]
    assert as_json["instance_group"][0]["kind"] == "KIND_CPU"


def test_model_config_completed_from_graph(client) -> None:
    config = client.get_model_config("identity", as_json=True)["config"]
    assert int(config["max_batch_size"]) == 32
    assert [(t["name"], [int(d) for d in t["dims"]]) for t in config["input"]] == [
        (f"in_{d}", [3]) for d in DATATYPES
    ]


def test_metadata_of_unknown_model_is_not_found(client) -> None:
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("no_such_model")
    assert info.value.status() == "StatusCode.NOT_FOUND"
    assert "no_such_model" in info.value.message()


# ------------------------------------------------------------------------------------------------------------
# inference


def test_infer_simple(client) -> None:
    feeds = simple_inputs(3, seed=1)
    outputs = [tc.InferRequestedOutput("OUTPUT0"), tc.InferRequestedOutput("OUTPUT1")]
    result = client.infer("simple", triton_inputs(feeds), outputs=outputs, request_id="req-1")
    response = result.get_response()
    assert response.id == "req-1"
    assert response.model_name == "simple"
    assert response.model_version == "1"
    assert_result(result, ort_reference(SIMPLE, feeds))
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), feeds["INPUT0"] - feeds["INPUT1"])


def test_infer_requested_output_subset(client) -> None:
    feeds = simple_inputs(1, seed=2)
    result = client.infer("simple", triton_inputs(feeds), outputs=[tc.InferRequestedOutput("OUTPUT1")])
    assert [o.name for o in result.get_response().outputs] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    assert_result(result, {"OUTPUT1": ort_reference(SIMPLE, feeds)["OUTPUT1"]})


def test_classification_outputs_are_refused_not_ignored(client) -> None:
    feeds = simple_inputs(2, seed=3)
    with pytest.raises(InferenceServerException) as caught:
        client.infer(
            "simple", triton_inputs(feeds), outputs=[tc.InferRequestedOutput("OUTPUT0", class_count=2)]
        )
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "output 'OUTPUT0'" in caught.value.message() and "classification" in caught.value.message()


def _every_datatype(rows: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(rows)
    arrays: dict[str, np.ndarray] = {}
    for d in DATATYPES:
        dtype = NUMPY[d]
        if d == "BOOL":
            array = rng.integers(0, 2, size=(rows, 3)).astype(bool)
            array[0] = [True, False, True]
        elif d == "BYTES":
            words = [b"", "h\u00e9llo".encode(), "\u65e5\u672c".encode(), b"x" * 1000, b"a\x00b", b"plain"]
            array = np.array(
                [[words[(r * 3 + c) % len(words)] for c in range(3)] for r in range(rows)], dtype=object
            )
        elif np.dtype(dtype).kind in "iu":
            info = np.iinfo(dtype)
            array = rng.integers(info.min, info.max, size=(rows, 3), dtype=dtype, endpoint=True)
            array[0] = [info.min, info.max, 0]
        else:
            array = (rng.standard_normal((rows, 3)) * 100).astype(dtype)
            array[0] = [np.nan, -np.inf, -0.0]
        arrays[f"in_{d}"] = array
    return arrays


def test_infer_every_datatype(client) -> None:
    feeds = _every_datatype(rows=4)
    result = client.infer("identity", triton_inputs(feeds, {f"in_{d}": d for d in DATATYPES}))
    response = result.get_response()
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        (f"out_{d}", d, [4, 3]) for d in DATATYPES
    ]
    expected = ort_reference(IDENTITY, feeds)
    assert_result(result, expected)
    for d in DATATYPES:  # identity: exactly what was sent
        got, sent = result.as_numpy(f"out_{d}"), feeds[f"in_{d}"]
        if d == "BYTES":
            assert got.tolist() == sent.tolist()
        else:
            assert got.tobytes() == sent.tobytes(), d


def test_async_infer(client) -> None:
    feeds = simple_inputs(2, seed=3)
    done = threading.Event()
    received: dict[str, Any] = {}

    def callback(result: tc.InferResult | None, error: InferenceServerException | None) -> None:
        received["result"], received["error"] = result, error
        done.set()

    client.async_infer("simple", triton_inputs(feeds), callback, request_id="async-1")
    assert done.wait(TIMEOUT_S), "async_infer callback never ran"
    assert received["error"] is None
    assert received["result"].get_response().id == "async-1"
    assert_result(received["result"], ort_reference(SIMPLE, feeds))


def test_async_infer_error_reaches_callback(client) -> None:
    done = threading.Event()
    received: dict[str, Any] = {}

    def callback(result: tc.InferResult | None, error: InferenceServerException | None) -> None:
        received["result"], received["error"] = result, error
        done.set()

    bad = np.zeros((1, 15), dtype=np.float32)
    client.async_infer("simple", triton_inputs({"INPUT0": bad, "INPUT1": bad}), callback)
    assert done.wait(TIMEOUT_S)
    assert received["result"] is None
    assert received["error"].status() == "StatusCode.INVALID_ARGUMENT"
    assert "INPUT0" in received["error"].message()


def test_stream_infer(server: ServerThread) -> None:
    """Responses carry their request's id and values; a bad request mid-stream errors in-band, the stream
    lives on."""
    stream_client = tc.InferenceServerClient(server.address)
    results: list[tuple[tc.InferResult | None, InferenceServerException | None]] = []
    lock = threading.Lock()
    all_in = threading.Event()
    cases = [simple_inputs(1 + i % 3, seed=10 + i) for i in range(6)]
    bad_at = 3
    total = len(cases) + 1

    def callback(result: tc.InferResult | None, error: InferenceServerException | None) -> None:
        with lock:
            results.append((result, error))
            if len(results) == total:
                all_in.set()

    try:
        stream_client.start_stream(callback)
        for i, feeds in enumerate(cases):
            if i == bad_at:
                bad = np.zeros((1, 17), dtype=np.float32)
                stream_client.async_stream_infer(
                    "simple", triton_inputs({"INPUT0": bad, "INPUT1": bad}), request_id="bad"
                )
            stream_client.async_stream_infer("simple", triton_inputs(feeds), request_id=f"s{i}")
        assert all_in.wait(TIMEOUT_S), f"only {len(results)} of {total} stream responses arrived"
        stream_client.stop_stream()
    finally:
        stream_client.close()

    errors = [(i, e) for i, (r, e) in enumerate(results) if e is not None]
    assert len(errors) == 1, errors
    index, error = errors[0]
    assert index == bad_at  # responses come back in request order
    assert isinstance(error, InferenceServerException)
    assert "INPUT0" in error.message()
    ok = [r for r, e in results if e is None]
    by_id = {r.get_response().id: r for r in ok}
    assert sorted(by_id) == sorted(f"s{i}" for i in range(len(cases)))
    assert [r.get_response().id for r in ok] == [f"s{i}" for i in range(len(cases))]
    for i, feeds in enumerate(cases):
        assert_result(by_id[f"s{i}"], ort_reference(SIMPLE, feeds))


def test_stream_error_for_an_undecodable_request_still_names_its_id(server: ServerThread, stub_for) -> None:
    good = pb.ModelInferRequest(model_name="simple", id="fine")
    bad = pb.ModelInferRequest(model_name="simple", id="broken")
    for request in (good, bad):
        for name in ("INPUT0", "INPUT1"):
            request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
            request.raw_input_contents.append(np.ones((1, 16), np.float32).tobytes())
    bad.raw_input_contents[0] = b"\x00" * 5  # fails while decoding, before the request is routed
    responses = list(stub_for(server).ModelStreamInfer(iter([bad, good]), timeout=TIMEOUT_S))
    assert [r.infer_response.id for r in responses] == ["broken", "fine"]
    assert "5 bytes" in responses[0].error_message and responses[0].infer_response.model_name == "simple"
    assert not responses[1].error_message


# ------------------------------------------------------------------------------------------------------------
# errors


def _infer_error(client, *args: Any, **kwargs: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        client.infer(*args, **kwargs)
    return info.value


def test_wrong_shape_is_invalid_argument(client) -> None:
    bad = np.zeros((1, 15), dtype=np.float32)
    error = _infer_error(client, "simple", triton_inputs({"INPUT0": bad, "INPUT1": bad}))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "INPUT0" in error.message()


def test_wrong_datatype_is_invalid_argument(client) -> None:
    feeds = {"INPUT0": np.zeros((1, 16), dtype=np.int32), "INPUT1": np.zeros((1, 16), dtype=np.float32)}
    error = _infer_error(client, "simple", triton_inputs(feeds, {"INPUT0": "INT32"}))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "INPUT0" in error.message() and "INT32" in error.message()


def test_unknown_input_and_output_are_invalid_argument(client) -> None:
    feeds = simple_inputs(1)
    feeds["INPUT9"] = feeds["INPUT0"]
    error = _infer_error(client, "simple", triton_inputs(feeds))
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "INPUT9" in error.message()
    error = _infer_error(
        client, "simple", triton_inputs(simple_inputs(1)), outputs=[tc.InferRequestedOutput("NOPE")]
    )
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "NOPE" in error.message()


def test_unknown_model_and_version_are_not_found(client) -> None:
    error = _infer_error(client, "no_such_model", triton_inputs(simple_inputs(1)))
    assert error.status() == "StatusCode.NOT_FOUND"
    assert "no_such_model" in error.message()
    error = _infer_error(client, "simple", triton_inputs(simple_inputs(1)), model_version="7")
    assert error.status() == "StatusCode.NOT_FOUND"
    assert "7" in error.message()


@pytest.mark.parametrize("call", ["get_cuda_shared_memory_status", "get_system_shared_memory_status"])
def test_unimplemented_rpc(client, call: str) -> None:
    with pytest.raises(InferenceServerException) as info:
        getattr(client, call)()
    assert info.value.status() == "StatusCode.UNIMPLEMENTED"
    assert "not implemented" in info.value.message()


# ------------------------------------------------------------------------------------------------------------
# standard gRPC services


@pytest.mark.parametrize("service", ["", "simple", "identity"])
def test_health_serving(channel, service: str) -> None:
    response = health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(service=service), timeout=TIMEOUT_S
    )
    assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_health_unknown_model_is_not_found(channel) -> None:
    with pytest.raises(grpc.RpcError) as info:
        health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="no_such_model"), timeout=TIMEOUT_S
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def _reflect(channel: grpc.Channel, **request: Any) -> reflection_pb2.ServerReflectionResponse:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = list(
        stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(**request)]), timeout=TIMEOUT_S
        )
    )
    assert len(responses) == 1
    return responses[0]


def test_reflection_lists_services(channel) -> None:
    response = _reflect(channel, list_services="")
    names = {s.name for s in response.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


def test_reflection_file_containing_symbol(channel) -> None:
    response = _reflect(channel, file_containing_symbol="inference.GRPCInferenceService")
    assert not response.HasField("error_response"), response.error_response.error_message
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(b)
        for b in response.file_descriptor_response.file_descriptor_proto
    ]
    assert files
    services = {f"{f.package}.{s.name}": [m.name for m in s.method] for f in files for s in f.service}
    methods = services["inference.GRPCInferenceService"]
    assert {"ServerLive", "ModelInfer", "ModelStreamInfer", "ModelConfig"} <= set(methods)
