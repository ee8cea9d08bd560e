"""Issue 11 item 4, response amplification: requesting one output many times, or rows whose outputs outgrow
the message limit, turned a small request into a huge answer that slowed every other client. Duplicate
requested outputs are INVALID_ARGUMENT; a response over --max-message-bytes is RESOURCE_EXHAUSTED (HTTP 400)
— before compute where the config and the input shapes fix the output sizes, after it otherwise — on gRPC
and HTTP alike."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from hotwire.proto import grpc_service_pb2 as pb
from hotwire.proto import grpc_service_pb2_grpc as pb_grpc
from onnx_models import add_sub, tiny_model, write_model
from server_harness import ServerThread

LIMIT = 64 * 1024
REPEATS = 256  # y repeats x 256 times along its last axis


def tiled(width: int | None) -> object:
    """y = Tile(x, [1, 256]): 256 times the input's bytes. `width` None: a dynamic last axis (the output size
    is known only after compute)."""
    repeats = numpy_helper.from_array(np.array([1, REPEATS], np.int64), "repeats")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width if width else "n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width * REPEATS if width else "m"])
    return tiny_model([helper.make_node("Tile", ["x", "repeats"], ["y"])], [x], [y], [repeats])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root = tmp_path_factory.mktemp("limits")
    write_model(root, "simple", add_sub())
    write_model(root, "fixed", tiled(4), "max_batch_size: 64\ndynamic_batching { }")
    write_model(root, "dynamic", tiled(None), "max_batch_size: 64\ndynamic_batching { }")
    thread = ServerThread(root, max_message_bytes=LIMIT).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[pb_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(server.address)
    yield pb_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def request(model: str, rows: int, width: int) -> pb.ModelInferRequest:
    message = pb.ModelInferRequest(model_name=model)
    message.inputs.add(name="x", datatype="FP32", shape=[rows, width])
    message.raw_input_contents.append(np.ones((rows, width), np.float32).tobytes())
    return message


def executions(server: ServerThread, model: str) -> int:
    return server.app.registry.entry(model).versions[1].stats.execution_count


def test_a_duplicate_requested_output_is_invalid_argument(stub, server) -> None:
    message = pb.ModelInferRequest(model_name="simple")
    for name in ("INPUT0", "INPUT1"):
        message.inputs.add(name=name, datatype="FP32", shape=[1, 16])
        message.raw_input_contents.append(np.ones((1, 16), np.float32).tobytes())
    for _ in range(3):
        message.outputs.add(name="OUTPUT0")
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(message, timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output 'OUTPUT0' is requested more than once" in caught.value.details()
    body = json.dumps(
        {
            "inputs": [
                {"name": n, "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}
                for n in ("INPUT0", "INPUT1")
            ],
            "outputs": [{"name": "OUTPUT1"}, {"name": "OUTPUT1"}],
        }
    ).encode()
    http = urllib.request.Request(f"http://{server.http_address}/v2/models/simple/infer", data=body)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(http, timeout=10)
    assert refused.value.code == 400 and b"requested more than once" in refused.value.read()


def test_fixed_output_sizes_over_the_limit_are_refused_before_compute(stub, server) -> None:
    assert (
        len(stub.ModelInfer(request("fixed", 8, 4), timeout=10).raw_output_contents[0]) == 8 * 4 * 4 * REPEATS
    )
    before = executions(server, "fixed")
    with pytest.raises(grpc.RpcError) as caught:  # 64 rows: 256 KiB of outputs from a 1 KiB request
        stub.ModelInfer(request("fixed", 64, 4), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"{64 * 4 * 4 * REPEATS} bytes of outputs, over the {LIMIT}-byte" in caught.value.details()
    assert executions(server, "fixed") == before  # refused before it ran


def test_dynamic_output_sizes_over_the_limit_are_refused_after_compute(stub, server) -> None:
    assert (
        len(stub.ModelInfer(request("dynamic", 2, 4), timeout=10).raw_output_contents[0])
        == 2 * 4 * 4 * REPEATS
    )
    before = executions(server, "dynamic")
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request("dynamic", 32, 4), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "over the" in caught.value.details() and "--max-message-bytes" in caught.value.details()
    assert executions(server, "dynamic") == before + 1  # it had to run to know
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [32, 4], "data": [1.0] * 128}]})
    http = urllib.request.Request(f"http://{server.http_address}/v2/models/dynamic/infer", data=body.encode())
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(http, timeout=10)
    assert refused.value.code == 400 and b"--max-message-bytes" in refused.value.read()
    assert (
        len(stub.ModelInfer(request("dynamic", 1, 4), timeout=10).raw_output_contents[0]) == 4 * 4 * REPEATS
    )
