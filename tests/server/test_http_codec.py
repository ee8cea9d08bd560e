"""http_codec on its own: the parts of the HTTP binding's encoding that the server tests can't pin down from
the outside (zero-copy binary inputs, range checks on JSON data, which outputs go in binary, protocol messages
as JSON)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hotwire.proto import grpc_service_pb2 as pb
from hotwire.proto import model_config_pb2 as mc
from hotwire.server import http_codec
from hotwire.server.errors import InvalidInput
from hotwire.server.wire import InferResponse


def decode(header: dict) -> tuple:
    return http_codec.decode_request("m", "", json.dumps(header).encode(), None)


def tensor(name: str, datatype: str, shape: list, data: object = None, size: int | None = None) -> dict:
    entry: dict = {"name": name, "datatype": datatype, "shape": shape}
    if data is not None:
        entry["data"] = data
    if size is not None:
        entry["parameters"] = {"binary_data_size": size}
    return entry


def test_binary_inputs_are_read_only_views_of_the_body() -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    header = json.dumps(
        {"inputs": [tensor("x", "FP32", [2, 3], size=values.nbytes), tensor("empty", "FP32", [0, 3], size=0)]}
    ).encode()
    body = header + values.tobytes()
    request, _ = http_codec.decode_request("m", "", body, str(len(header)))
    x, empty = (t.array for t in request.inputs)
    np.testing.assert_array_equal(x, values)
    assert np.shares_memory(x, np.frombuffer(body, np.uint8))
    assert not x.flags.writeable
    assert empty.shape == (0, 3)


@pytest.mark.parametrize(
    "entry, expected",
    [
        (tensor("u8", "UINT8", [2], [1, 256]), "out of range for UINT8"),
        (tensor("i8", "INT8", [1], [-129]), "out of range for INT8"),
        (tensor("i64", "INT64", [1], [1.5]), "INT64 data must be integers"),
        (tensor("f", "FP32", [1], [True]), "FP32 data must be numbers"),
        (tensor("f", "FP32", [1], [None]), "FP32 data must be numbers"),
        (tensor("b", "BOOL", [2], [1, 0]), "BOOL data must be true or false"),
        (tensor("s", "BYTES", [1], [3]), "BYTES data must be strings"),
        (tensor("d", "FP32", [2], 1.0), "'data' must be a list"),
        (tensor("n", "FP32", [2, 2], [[1.0, 2.0], [3.0]]), "3 elements, expected 4"),
        (tensor("z", "FP32", [True]), "'shape'"),
    ],
)
def test_json_data_is_checked_against_its_datatype(entry: dict, expected: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        decode({"inputs": [entry]})
    assert f"input '{entry['name']}'" in str(caught.value)
    assert expected in str(caught.value)


def test_json_data_at_the_limits_of_each_datatype() -> None:
    request, _ = decode(
        {
            "inputs": [
                tensor("u64", "UINT64", [2], [0, 2**64 - 1]),
                tensor("i64", "INT64", [2], [-(2**63), 2**63 - 1]),
                tensor("deep", "INT32", [2, 2, 1], [[[1], [2]], [[3], [4]]]),
                tensor("s", "BYTES", [2], ["", "\u00e9\u65e5"]),
            ]
        }
    )
    u64, i64, deep, strings = (t.array for t in request.inputs)
    assert u64.dtype == np.uint64 and u64.tolist() == [0, 2**64 - 1]
    assert i64.dtype == np.int64 and i64.tolist() == [-(2**63), 2**63 - 1]
    assert deep.shape == (2, 2, 1) and deep.reshape(-1).tolist() == [1, 2, 3, 4]
    assert strings.dtype == object and strings.tolist() == ["", "\u00e9\u65e5"]


def test_encoding_parameters_are_not_passed_to_the_model() -> None:
    request, encoding = decode(
        {
            "inputs": [tensor("x", "FP32", [1], [1.0])],
            "parameters": {"binary_data_output": True, "priority": 2},
        }
    )
    assert request.parameters == {"priority": 2}
    assert encoding.is_binary("anything")


def test_an_output_choice_overrides_binary_data_output() -> None:
    _, encoding = decode(
        {
            "inputs": [],
            "parameters": {"binary_data_output": True},
            "outputs": [{"name": "a", "parameters": {"binary_data": False}}, {"name": "b"}],
        }
    )
    arrays = [np.array([1.5], np.float32), np.array([7], np.int64)]
    response = InferResponse("m", "1", "r", ["a", "b"], arrays)
    body, json_length = http_codec.encode_response(response, encoding)
    assert json_length is not None
    header = json.loads(body[:json_length])
    assert header["id"] == "r" and header["model_version"] == "1"
    a, b = header["outputs"]
    assert (a["data"], "parameters" in a) == ([1.5], False)
    assert b["parameters"] == {"binary_data_size": 8} and "data" not in b
    assert body[json_length:] == np.array([7], np.int64).tobytes()


def test_json_only_response_has_no_header_length() -> None:
    response = InferResponse("m", "1", "", ["s"], [np.array([b"ok", "\u00e9"], dtype=object)])
    body, json_length = http_codec.encode_response(response, http_codec.OutputEncoding())
    assert json_length is None
    output = {"name": "s", "datatype": "BYTES", "shape": [2], "data": ["ok", "\u00e9"]}
    assert json.loads(body) == {"model_name": "m", "model_version": "1", "outputs": [output]}


def test_non_utf8_bytes_output_needs_binary() -> None:
    response = InferResponse("m", "1", "", ["s"], [np.array([b"\xff"], dtype=object)])
    with pytest.raises(InvalidInput) as caught:
        http_codec.encode_response(response, http_codec.OutputEncoding())
    assert "output 's'" in str(caught.value) and "binary_data" in str(caught.value)
    body, json_length = http_codec.encode_response(response, http_codec.OutputEncoding(default_binary=True))
    assert json_length is not None and body[json_length:] == b"\x01\x00\x00\x00\xff"


def test_message_json_writes_numbers_as_numbers_and_enums_by_name() -> None:
    success = pb.StatisticDuration(count=3, ns=2**40)
    stats = pb.ModelStatistics(
        name="m", version="1", inference_count=2**63 + 5, inference_stats=pb.InferStatistics(success=success)
    )
    as_json = http_codec.message_json(stats)
    assert as_json["inference_count"] == 2**63 + 5
    assert as_json["inference_stats"]["success"] == {"count": 3, "ns": 2**40}
    assert as_json["execution_count"] == 0  # defaults are written, as Triton does
    assert as_json["batch_stats"] == []

    config = mc.ModelConfig(name="m", max_batch_size=4)
    config.input.add(name="x", data_type=mc.TYPE_FP16, dims=[-1, 3])
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=2)
    config.parameters["p"].string_value = "v"
    as_json = http_codec.message_json(config)
    assert as_json["input"][0]["data_type"] == "TYPE_FP16" and as_json["input"][0]["dims"] == [-1, 3]
    assert as_json["instance_group"][0]["kind"] == "KIND_CPU" and as_json["instance_group"][0]["count"] == 2
    assert as_json["parameters"] == {"p": {"string_value": "v"}}
    assert "dynamic_batching" not in as_json  # an unset message field is left out
    assert json.loads(http_codec.json_dumps(as_json)) == as_json


def test_message_json_writes_only_the_set_member_of_a_oneof() -> None:
    assert http_codec.message_json(pb.InferParameter(int64_param=0)) == {"int64_param": 0}
    assert http_codec.message_json(pb.InferParameter(string_param="s")) == {"string_param": "s"}


def test_error_body() -> None:
    assert json.loads(http_codec.error_body("it's \u00e9")) == {"error": "it's \u00e9"}


def test_a_repeated_binary_header_is_parsed_once_and_still_binds_each_bodys_data() -> None:
    header = json.dumps(
        {
            "inputs": [tensor("x", "FP32", [1, 4], size=16)],
            "outputs": [{"name": "y"}],
            "parameters": {"priority": 2},
        }
    ).encode()
    first, _ = http_codec.decode_request(
        "cached", "1", header + np.ones(4, np.float32).tobytes(), str(len(header))
    )
    second, encoding = http_codec.decode_request(
        "cached", "1", header + np.arange(4, dtype=np.float32).tobytes(), str(len(header))
    )
    np.testing.assert_array_equal(first.inputs[0].array, np.ones((1, 4), np.float32))
    np.testing.assert_array_equal(second.inputs[0].array, np.arange(4, dtype=np.float32).reshape(1, 4))
    assert first.header_key is not None and second.header_key == first.header_key  # one plan for both
    assert second.parameters == {"priority": 2} and second.requested_outputs == ["y"]
    assert not encoding.is_binary("y")
    # the cached layout checks each body's size as the first parse does
    with pytest.raises(InvalidInput, match="runs past the end of the body"):
        http_codec.decode_request("cached", "1", header + b"\0" * 8, str(len(header)))
    with pytest.raises(InvalidInput, match="4 bytes after the binary inputs"):
        http_codec.decode_request("cached", "1", header + b"\0" * 20, str(len(header)))
    # another model or version behind the same header is another entry: its URL is part of the key
    other, _ = http_codec.decode_request("cached", "2", header + b"\0" * 16, str(len(header)))
    assert (other.model_version, other.header_key != first.header_key) == ("2", True)


def test_a_header_with_json_data_is_never_cached() -> None:
    body = json.dumps({"inputs": [tensor("x", "FP32", [1, 2], [1.0, 2.0])]}).encode()
    request, _ = http_codec.decode_request("m", "", body, str(len(body)))
    assert request.header_key is None
