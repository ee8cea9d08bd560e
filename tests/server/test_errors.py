"""The error contract (ARCHITECTURE.md §Errors) through the real server: each malformed request gets its
status code and a message naming the tensor and what was expected, and the server keeps serving afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from hotwire.proto import grpc_service_pb2 as pb
from hotwire.proto import grpc_service_pb2_grpc
from onnx_models import add_sub, write_model
from server_harness import ServerThread

SIMPLE_CONFIG = """
name: "simple"
max_batch_size: 4
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
"""


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    root: Path = tmp_path_factory.mktemp("repo")
    write_model(root, "simple", add_sub(), SIMPLE_CONFIG)
    write_model(root, "broken", b"this is not an onnx model")
    server = ServerThread(root, max_message_bytes=1024 * 1024).start()
    channel = grpc.insecure_channel(server.address)
    yield channel
    channel.close()
    server.stop()


@pytest.fixture(scope="module")
def stub(channel: grpc.Channel) -> grpc_service_pb2_grpc.GRPCInferenceServiceStub:
    return grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)


def simple_request(rows: int = 1, **changes: object) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="FP32", shape=[rows, 16])
        request.raw_input_contents.append(np.ones((rows, 16), np.float32).tobytes())
    for key, value in changes.items():
        setattr(request, key, value)
    return request


def expect_error(
    stub: grpc_service_pb2_grpc.GRPCInferenceServiceStub,
    request: pb.ModelInferRequest,
    code: grpc.StatusCode,
    *fragments: str,
) -> str:
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=10)
    assert caught.value.code() == code, caught.value.details()
    details = caught.value.details()
    for fragment in fragments:
        assert fragment in details
    return details


def test_wrong_shape_names_the_tensor_and_the_expected_shape(stub):
    request = simple_request()
    request.inputs[1].shape[:] = [1, 15]
    request.raw_input_contents[1] = np.ones((1, 15), np.float32).tobytes()
    expect_error(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "'INPUT1'", "[1, 15]", "[-1, 16]")


def test_wrong_datatype_names_both_datatypes(stub):
    request = simple_request()
    request.inputs[0].datatype = "FP64"
    request.raw_input_contents[0] = np.ones((1, 16), np.float64).tobytes()
    expect_error(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "'INPUT0'", "FP64", "FP32")


def test_unknown_datatype_is_rejected(stub):
    request = simple_request()
    request.inputs[0].datatype = "FLOAT"
    expect_error(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "'INPUT0'", "unknown datatype 'FLOAT'")


def test_raw_byte_size_mismatch_names_the_expected_size(stub):
    request = simple_request()
    request.raw_input_contents[0] = b"\x00" * 63
    expect_error(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "'INPUT0'", "63 bytes", "expected 64")


def test_missing_input_is_named(stub):
    request = simple_request()
    del request.inputs[1]
    del request.raw_input_contents[1]
    expect_error(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "INPUT1")


def test_unknown_input_is_named_with_the_expected_inputs(stub):
    request = simple_request()
    request.inputs[1].name = "INPUT9"
    expect_error(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "'INPUT9'", "INPUT0", "INPUT1")


def test_duplicate_input_is_rejected(stub):
    request = simple_request()
    request.inputs[1].name = "INPUT0"
    expect_error(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "'INPUT0'", "more than once")


def test_raw_and_typed_contents_must_not_be_mixed(stub):
    request = simple_request()
    request.inputs[0].contents.fp32_contents.extend([1.0] * 16)
    expect_error(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "'INPUT0'", "mixed")


def test_raw_contents_count_must_match_inputs(stub):
    request = simple_request()
    del request.raw_input_contents[1]
    expect_error(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "one raw_input_contents entry per input")


def test_typed_contents_element_count_is_checked(stub):
    request = pb.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        tensor.contents.fp32_contents.extend([1.0] * (16 if name == "INPUT0" else 3))
    expect_error(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "'INPUT1'", "3 elements", "expected 16")


def test_typed_contents_in_the_wrong_field_are_rejected(stub):
    request = pb.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        tensor = request.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        tensor.contents.int_contents.extend([1] * 16)
    expect_error(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "'INPUT0'", "fp32_contents")


def test_input_without_data_is_rejected(stub):
    request = pb.ModelInferRequest(model_name="simple")
    request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    request.inputs.add(name="INPUT1", datatype="FP32", shape=[1, 16])
    expect_error(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "'INPUT0'", "no data")


def test_batch_larger_than_max_batch_size_is_rejected(stub):
    expect_error(
        stub, simple_request(rows=5), grpc.StatusCode.INVALID_ARGUMENT, "'INPUT0'", "batch size 5", "1..4"
    )


def test_unknown_requested_output_is_named(stub):
    request = simple_request()
    request.outputs.add(name="OUTPUT7")
    expect_error(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "'OUTPUT7'", "OUTPUT0")


def test_unknown_model_is_not_found(stub):
    expect_error(stub, simple_request(model_name="nope"), grpc.StatusCode.NOT_FOUND, "'nope'")


def test_unknown_version_is_not_found(stub):
    expect_error(stub, simple_request(model_version="9"), grpc.StatusCode.NOT_FOUND, "'simple'", "version 9")


def test_non_integer_version_is_invalid(stub):
    expect_error(stub, simple_request(model_version="latest"), grpc.StatusCode.INVALID_ARGUMENT, "'latest'")


@pytest.mark.parametrize("version", ["\u00b2", "\u0661", "01", "+1", " 1", "9" * 5000, str(2**63)])
def test_versions_are_canonical_ascii_integers(stub, version):
    """Issue 11 item 6: "²" and 5000 digits were INTERNAL (int() raised), "01" and the Arabic-Indic "١" were
    served as version 1. Every call that names a version answers INVALID_ARGUMENT, the echo truncated."""
    details = expect_error(
        stub, simple_request(model_version=version), grpc.StatusCode.INVALID_ARGUMENT, "not a version"
    )
    assert len(details) < 200
    for call, request in (
        (stub.ModelMetadata, pb.ModelMetadataRequest(name="simple", version=version)),
        (stub.ModelConfig, pb.ModelConfigRequest(name="simple", version=version)),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert not stub.ModelReady(pb.ModelReadyRequest(name="simple", version=version)).ready
    rollback = pb.RepositoryModelLoadRequest(model_name="simple")
    rollback.parameters["hotwire.rollback"].string_param = version
    with pytest.raises(grpc.RpcError) as caught:
        stub.RepositoryModelLoad(rollback, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()


@pytest.mark.parametrize(
    ("shape", "fragment"),
    [
        ([1] * 65, "65 dimensions, at most 64"),
        ([2**63 - 1, 0], "too large"),
        ([2**40, 2**30, 0], "too large"),
    ],
)
def test_shapes_no_tensor_can_have_are_invalid_argument(stub, shape, fragment):
    """Issue 11 item 6: these were INTERNAL with a logged traceback (NumPy refused them deep in decoding)."""
    request = pb.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="FP32", shape=shape)
        request.raw_input_contents.append(b"")
    expect_error(stub, request, grpc.StatusCode.INVALID_ARGUMENT, "INPUT0", fragment)
    typed = pb.ModelInferRequest(model_name="simple")
    typed.inputs.add(name="INPUT0", datatype="BYTES", shape=[2**62, 0]).contents.SetInParent()
    expect_error(stub, typed, grpc.StatusCode.INVALID_ARGUMENT, "INPUT0")


def test_model_that_failed_to_load_answers_unavailable_with_the_reason(stub):
    request = simple_request(model_name="broken")
    expect_error(stub, request, grpc.StatusCode.UNAVAILABLE, "'broken'", "could not load")
    assert stub.ModelReady(pb.ModelReadyRequest(name="broken")).ready is False
    assert stub.ModelReady(pb.ModelReadyRequest(name="simple")).ready is True


def test_metadata_of_unknown_model_is_not_found(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_garbage_bytes_are_invalid_argument(channel):
    # Bytes protobuf would never produce: truncated varint, a field running past the end, a truncated string.
    raw_call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    for garbage in (b"\xff\xff\xff", b"\x3a\x10abc", b"\x0a\x05ab"):
        with pytest.raises(grpc.RpcError) as caught:
            raw_call(garbage, timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed" in caught.value.details()


def test_message_over_the_size_limit_is_resource_exhausted(stub):
    request = simple_request()
    request.raw_input_contents[0] = b"\x00" * (2 * 1024 * 1024)
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_unimplemented_rpc_says_so(stub):
    with pytest.raises(grpc.RpcError) as caught:
        stub.TraceSetting(pb.TraceSettingRequest(model_name="simple"))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "TraceSetting" in caught.value.details()


def test_server_still_serves_correctly_after_every_bad_request(stub):
    response = stub.ModelInfer(simple_request(rows=2), timeout=10)
    out = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, 16)
    np.testing.assert_array_equal(out, np.full((2, 16), 2.0, np.float32))


def test_client_strings_are_echoed_truncated(stub):
    """Issue 11 item 8: a 10k-character name came back whole in the error and tripped the metadata limit."""
    long = "n" * 10_000
    calls = [
        (stub.ModelInfer, simple_request(model_name=long), grpc.StatusCode.NOT_FOUND),
        (stub.ModelMetadata, pb.ModelMetadataRequest(name=long), grpc.StatusCode.NOT_FOUND),
        (stub.ModelConfig, pb.ModelConfigRequest(name=long), grpc.StatusCode.NOT_FOUND),
        (stub.ModelStatistics, pb.ModelStatisticsRequest(name=long), grpc.StatusCode.NOT_FOUND),
        (
            stub.ModelStatistics,
            pb.ModelStatisticsRequest(name="simple", version=long),
            grpc.StatusCode.NOT_FOUND,
        ),
        (stub.RepositoryModelUnload, pb.RepositoryModelUnloadRequest(model_name=long), None),
    ]
    renamed_input = simple_request()
    renamed_input.inputs[0].name = long
    calls.append((stub.ModelInfer, renamed_input, grpc.StatusCode.INVALID_ARGUMENT))
    unknown_output = simple_request()
    unknown_output.outputs.add(name=long)
    calls.append((stub.ModelInfer, unknown_output, grpc.StatusCode.INVALID_ARGUMENT))
    for call, request, code in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=10)
        if code is not None:
            assert caught.value.code() == code, caught.value.details()
        assert caught.value.code() != grpc.StatusCode.INTERNAL
        assert len(caught.value.details()) <= 1000, caught.value.details()[:300]
