"""Warm-up at load, as Triton: a configured `model_warmup` must succeed (BYTES data files in Triton's raw
layout included) or the load fails; hotwire's own default warm-up (zeros, empty strings), which Triton does
not do, never keeps a model from loading."""

from __future__ import annotations

import logging
import struct

import grpc
import pytest

from hotwire.proto import grpc_service_pb2 as pb
from onnx_models import add_sub_string, write_model

CONFIG = """
name: "simple_string"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_STRING dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_STRING dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_STRING dims: [ 16 ] }
]
"""
WARMUP = """
model_warmup [ { name: "numbers" batch_size: 2
  inputs { key: "INPUT0" value: { data_type: TYPE_STRING dims: [ 16 ] input_data_file: "numbers" } }
  inputs { key: "INPUT1" value: { data_type: TYPE_STRING dims: [ 16 ] input_data_file: "numbers" } } } ]
"""


def _raw_bytes(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


def _infer(stub, values: list[str]) -> list[bytes]:
    request = pb.ModelInferRequest(model_name="simple_string")
    for name in ("INPUT0", "INPUT1"):
        request.inputs.add(name=name, datatype="BYTES", shape=[1, 16])
        request.raw_input_contents.append(_raw_bytes(values))
    response = stub.ModelInfer(request, timeout=30)
    data = response.raw_output_contents[0]
    out, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        out.append(data[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return out


def _ready(stub) -> bool:
    return stub.ModelReady(pb.ModelReadyRequest(name="simple_string"), timeout=30).ready


def test_a_model_the_default_warm_up_does_not_suit_still_loads_and_serves(
    tmp_path, running_server, stub_for, caplog
):
    write_model(tmp_path, "simple_string", add_sub_string(), config=CONFIG)
    with caplog.at_level(logging.WARNING, logger="hotwire.server.loader"):
        server = running_server(tmp_path)
    stub = stub_for(server)
    assert _ready(stub)
    assert any("default warm-up" in r.getMessage() and "unwarmed" in r.getMessage() for r in caplog.records)
    values = [str(i) for i in range(16)]
    assert _infer(stub, values) == [str(2 * i).encode() for i in range(16)]  # OUTPUT0 = INPUT0 + INPUT1


def test_a_configured_bytes_warm_up_file_in_tritons_raw_layout_warms_the_model(
    tmp_path, running_server, stub_for, caplog
):
    model_dir = write_model(tmp_path, "simple_string", add_sub_string(), config=CONFIG + WARMUP)
    (model_dir / "warmup").mkdir()
    (model_dir / "warmup" / "numbers").write_bytes(_raw_bytes([str(i) for i in range(16)]))
    with caplog.at_level(logging.WARNING, logger="hotwire.server.loader"):
        server = running_server(tmp_path)
    stub = stub_for(server)
    assert _ready(stub)
    assert not any("warm-up" in r.getMessage() for r in caplog.records)
    assert _infer(stub, ["7"] * 16) == [b"14"] * 16


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (_raw_bytes(["x"] * 16), "warm-up inference (batch 2) failed"),  # parses as no integer
        (b"\x09\x00\x00\x00ab", "runs past the end"),  # a length prefix longer than the file
    ],
)
def test_a_configured_warm_up_that_fails_fails_the_load_saying_why(
    tmp_path, running_server, stub_for, content, reason
):
    model_dir = write_model(tmp_path, "simple_string", add_sub_string(), config=CONFIG + WARMUP)
    (model_dir / "warmup").mkdir()
    (model_dir / "warmup" / "numbers").write_bytes(content)
    stub = stub_for(running_server(tmp_path))
    assert not _ready(stub)
    index = stub.RepositoryIndex(pb.RepositoryIndexRequest(), timeout=30)
    (entry,) = [m for m in index.models if m.name == "simple_string"]
    assert reason in entry.reason, entry.reason
    with pytest.raises(grpc.RpcError) as failed:
        _infer(stub, ["1"] * 16)
    assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert entry.state == "UNAVAILABLE"
