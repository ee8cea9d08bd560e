"""wire.py: raw inputs are views over the request bytes (no copy), responses parse as protobuf and carry
outputs in raw_output_contents, one per output, in order."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hotwire.proto import grpc_service_pb2 as pb
from hotwire.server import wire
from hotwire.server.errors import InvalidInput


def request_bytes(arrays: dict[str, np.ndarray], datatype: str = "FP32") -> bytes:
    request = pb.ModelInferRequest(model_name="m", model_version="1", id="x")
    request.parameters["priority"].uint64_param = 3
    for name, array in arrays.items():
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(array.tobytes())
    request.outputs.add(name="out")
    return request.SerializeToString()


def test_raw_inputs_are_views_over_the_request_bytes_not_copies():
    a = np.arange(600 * 256, dtype=np.float32).reshape(600, 256)
    b = np.ones((2, 3), np.float32)
    data = request_bytes({"a": a, "b": b})
    decoded = wire.decode_request(data)
    buffer = np.frombuffer(data, dtype=np.uint8)
    for tensor, original in zip(decoded.inputs, (a, b)):
        np.testing.assert_array_equal(tensor.array, original)
        assert np.shares_memory(tensor.array, buffer), f"{tensor.name} was copied"
        assert not tensor.array.flags.writeable
    assert decoded.model_name == "m" and decoded.model_version == "1" and decoded.id == "x"
    assert decoded.parameters == {"priority": 3}
    assert decoded.requested_outputs == ["out"]


def test_scan_keeps_every_field_but_id_and_raw_for_protobuf():
    data = request_bytes({"a": np.ones((1, 4), np.float32)})
    header, request_id, raw = wire.scan_request(data)
    parsed = pb.ModelInferRequest.FromString(header)
    assert not parsed.raw_input_contents and len(raw) == 1 and request_id == "x"
    full = pb.ModelInferRequest.FromString(data)
    full.ClearField("raw_input_contents")
    full.ClearField("id")
    assert parsed == full


def test_repeated_headers_decode_from_the_cache_with_their_own_id_and_data():
    first = wire.decode_request(request_bytes({"a": np.zeros((2, 3), np.float32)}))
    again = pb.ModelInferRequest.FromString(request_bytes({"a": np.ones((2, 3), np.float32)}))
    again.id = "other"
    second = wire.decode_request(again.SerializeToString())
    assert first.header_key == second.header_key and first.header_key in wire._headers
    assert second.id == "other" and first.id == "x"
    np.testing.assert_array_equal(first.inputs[0].array, np.zeros((2, 3)))
    np.testing.assert_array_equal(second.inputs[0].array, np.ones((2, 3)))
    bad = pb.ModelInferRequest.FromString(request_bytes({"a": np.zeros((2, 3), np.float32)}))
    bad.raw_input_contents[0] = b"\x00" * 5  # same header, wrong size: the byte count is checked every time
    with pytest.raises(InvalidInput, match="5 bytes"):
        wire.decode_request(bad.SerializeToString())
    missing = pb.ModelInferRequest.FromString(
        request_bytes({"a": np.zeros((2, 3), np.float32), "b": np.zeros(1, np.float32)})
    )
    wire.decode_request(missing.SerializeToString())
    del missing.raw_input_contents[1]  # same cached header, one raw entry short: never silently truncated
    with pytest.raises(InvalidInput, match="one raw_input_contents entry per input.*input 'b' has no data"):
        wire.decode_request(missing.SerializeToString())


def test_headers_with_large_parameters_are_decoded_but_never_cached():
    before = len(wire._headers)
    for i in range(20):
        request = pb.ModelInferRequest.FromString(request_bytes({"a": np.full((1, 2), i, np.float32)}))
        request.parameters["blob"].string_param = f"{i}:" + "x" * 100_000  # each one distinct and 100 KB
        decoded = wire.decode_request(request.SerializeToString())
        assert decoded.parameters["blob"].startswith(f"{i}:") and decoded.inputs[0].array[0, 0] == i
        assert decoded.header_key is None  # so no plan cache keeps it either
    assert len(wire._headers) == before
    assert all(len(key) <= wire.HEADER_CACHE_MAX_KEY_BYTES for key in wire._headers)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_invalid_input(blob):
    try:
        wire.decode_request(blob)
    except InvalidInput:
        pass


def test_bytes_elements_round_trip_in_length_prefixed_form():
    elements = ["", "a", "ünïcødé", "x" * 1000]
    raw = b"".join(len(e.encode()).to_bytes(4, "little") + e.encode() for e in elements)
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="s", datatype="BYTES", shape=[2, 2])
    request.raw_input_contents.append(raw)
    array = wire.decode_request(request.SerializeToString()).inputs[0].array
    assert array.shape == (2, 2) and list(array.reshape(-1)) == elements
    assert wire.raw_bytes(array, wire.datatypes.BY_NAME["BYTES"]) == raw


@pytest.mark.parametrize("raw", [b"\x05\x00\x00\x00ab", b"\x01\x00", b"\x01\x00\x00\x00\xff"])
def test_malformed_bytes_elements_name_the_tensor(raw):
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="s", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(raw)
    with pytest.raises(InvalidInput, match="input 's'"):
        wire.decode_request(request.SerializeToString())


def test_response_has_one_raw_output_per_output_in_order_and_parses():
    outputs = [
        np.arange(6, dtype=np.int64).reshape(2, 3),
        np.array([[True, False]]),
        np.array(["ab", "c"], dtype=object),
        np.asfortranarray(np.arange(6, dtype=np.float16).reshape(2, 3)),
    ]
    response = wire.InferResponse("m", "2", "id-1", ["i", "b", "s", "h"], outputs, {"flag": True})
    encoder = wire.ResponseEncoder("m", "2")
    for data, unwrap in (
        (encoder.encode(response), lambda d: pb.ModelInferResponse.FromString(d)),
        (encoder.encode_stream(response), lambda d: pb.ModelStreamInferResponse.FromString(d).infer_response),
    ):
        parsed = unwrap(data)
        assert (parsed.model_name, parsed.model_version, parsed.id) == ("m", "2", "id-1")
        assert [o.name for o in parsed.outputs] == ["i", "b", "s", "h"]
        assert [o.datatype for o in parsed.outputs] == ["INT64", "BOOL", "BYTES", "FP16"]
        assert len(parsed.raw_output_contents) == 4
        np.testing.assert_array_equal(
            np.frombuffer(parsed.raw_output_contents[0], np.int64).reshape(2, 3), outputs[0]
        )
        np.testing.assert_array_equal(
            np.frombuffer(parsed.raw_output_contents[3], np.float16).reshape(2, 3), outputs[3]
        )
        assert parsed.raw_output_contents[2] == b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"
        assert parsed.parameters["flag"].bool_param is True
