"""The calls of tritonclient's published gRPC examples, made the way those examples make them, against a real
hotwire server serving ONNX equivalents of Triton's example models.

`simple` adds and subtracts two INT32 [1, 16] tensors, `simple_string` does the same on decimal strings
(BYTES), `simple_identity` echoes BYTES. Results are checked against in-process onnxruntime and NumPy.
The examples' sequence clients (stateful sequence batching) and shared-memory clients use features hotwire
does not have.
"""

from __future__ import annotations

import asyncio
import queue
import time
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aioclient
from tritonclient import utils
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from onnx_models import add_sub_int32, add_sub_string, bytes_identity, write_model
from server_harness import ServerThread

StartServer = Callable[..., ServerThread]

# Triton's example repository declares these three models this way.
SIMPLE_CONFIG = """
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_INT32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_INT32 dims: [ 16 ] }
]
"""
SIMPLE_STRING_CONFIG = SIMPLE_CONFIG.replace('"simple"', '"simple_string"').replace("INT32", "STRING")
SIMPLE_IDENTITY_CONFIG = """
name: "simple_identity"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "INPUT0" data_type: TYPE_STRING dims: [ 16 ] } ]
output [ { name: "OUTPUT0" data_type: TYPE_STRING dims: [ 16 ] } ]
"""
SIMPLE = add_sub_int32()
# Triton's, unchanged: it can't parse the empty strings of hotwire's default warm-up
SIMPLE_STRING = add_sub_string()
SIMPLE_IDENTITY = bytes_identity()
MODELS: dict[str, tuple[onnx.ModelProto, str]] = {
    "simple": (SIMPLE, SIMPLE_CONFIG),
    "simple_string": (SIMPLE_STRING, SIMPLE_STRING_CONFIG),
    "simple_identity": (SIMPLE_IDENTITY, SIMPLE_IDENTITY_CONFIG),
}
TIMEOUT_S = 30.0  # every wait in this file is bounded by this


def _write_repository(root: Path) -> Path:
    for name, (model, config) in MODELS.items():
        write_model(root, name, model, config=config)
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    thread = ServerThread(_write_repository(tmp_path_factory.mktemp("examples_repo"))).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[grpcclient.InferenceServerClient]:
    triton = grpcclient.InferenceServerClient(url=server.address, verbose=False)
    yield triton
    triton.close()


_SESSIONS: dict[str, ort.InferenceSession] = {}


def reference(name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """What in-process onnxruntime computes for model `name` (BYTES as bytes, as tritonclient gives them)."""
    session = _SESSIONS.get(name)
    if session is None:
        session = _SESSIONS[name] = ort.InferenceSession(
            MODELS[name][0].SerializeToString(), providers=["CPUExecutionProvider"]
        )
    decode, encode = np.vectorize(bytes.decode, otypes=[object]), np.vectorize(str.encode, otypes=[object])
    as_str = {n: decode(a) if a.dtype.kind in "OS" else a for n, a in feeds.items()}
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(names, as_str), strict=True))
    return {n: encode(a) if a.dtype == object else a for n, a in outputs.items()}


def simple_example_data() -> tuple[
    list[grpcclient.InferInput], list[grpcclient.InferRequestedOutput], np.ndarray, np.ndarray
]:
    """The examples' request: INPUT0 = 0..15, INPUT1 = ones, both INT32 [1, 16]; both outputs requested."""
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "INT32"),
        grpcclient.InferInput("INPUT1", [1, 16], "INT32"),
    ]
    input0_data = np.expand_dims(np.arange(0, 16, dtype=np.int32), axis=0)
    input1_data = np.ones(shape=(1, 16), dtype=np.int32)
    inputs[0].set_data_from_numpy(input0_data)
    inputs[1].set_data_from_numpy(input1_data)
    outputs = [grpcclient.InferRequestedOutput("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT1")]
    return inputs, outputs, input0_data, input1_data


def check_simple(result: grpcclient.InferResult, input0: np.ndarray, input1: np.ndarray) -> None:
    """Sum and difference, as the examples check them element by element, and as onnxruntime computes them."""
    output0, output1 = result.as_numpy("OUTPUT0"), result.as_numpy("OUTPUT1")
    assert output0 is not None and output1 is not None
    assert output0.dtype == np.int32 and output0.shape == input0.shape
    np.testing.assert_array_equal(output0, input0 + input1)
    np.testing.assert_array_equal(output1, input0 - input1)
    expected = reference("simple", {"INPUT0": input0, "INPUT1": input1})
    np.testing.assert_array_equal(output0, expected["OUTPUT0"])
    np.testing.assert_array_equal(output1, expected["OUTPUT1"])


def model_stats(client: grpcclient.InferenceServerClient, name: str) -> Any:
    statistics = client.get_inference_statistics(model_name=name)
    assert len(statistics.model_stats) == 1
    return statistics.model_stats[0]


# ------------------------------------------------------------------------------------------------------------
# synchronous infer, with statistics


@pytest.mark.parametrize("compression", [None, "gzip", "deflate"])
def test_infer_with_timeout_headers_compression_then_statistics(
    server: ServerThread, compression: str | None
) -> None:
    """The simple gRPC infer example: infer with client_timeout, headers and a compression algorithm, read the
    model's statistics, then infer again with outputs=None (every output)."""
    client = grpcclient.InferenceServerClient(
        url=server.address,
        verbose=False,
        ssl=False,
        root_certificates=None,
        private_key=None,
        certificate_chain=None,
    )
    try:
        before = model_stats(client, "simple")
        inputs, outputs, input0, input1 = simple_example_data()
        results = client.infer(
            model_name="simple",
            inputs=inputs,
            outputs=outputs,
            client_timeout=TIMEOUT_S,
            headers={"test": "1"},
            compression_algorithm=compression,
        )
        check_simple(results, input0, input1)
        assert [o.name for o in results.get_response().outputs] == ["OUTPUT0", "OUTPUT1"]

        statistics = client.get_inference_statistics(model_name="simple")
        assert len(statistics.model_stats) == 1
        after = statistics.model_stats[0]
        assert (after.name, after.version) == ("simple", "1")
        assert after.inference_count - before.inference_count == 1
        assert after.inference_stats.success.count - before.inference_stats.success.count == 1
        assert after.inference_stats.fail.count == before.inference_stats.fail.count
        assert after.inference_stats.success.ns > before.inference_stats.success.ns
        assert after.last_inference > 0

        results = client.infer(
            model_name="simple", inputs=inputs, outputs=None, compression_algorithm=compression
        )
        check_simple(results, input0, input1)
        assert sorted(o.name for o in results.get_response().outputs) == ["OUTPUT0", "OUTPUT1"]
    finally:
        client.close()


def test_statistics_as_json_and_for_every_model(client: grpcclient.InferenceServerClient) -> None:
    inputs, outputs, _, _ = simple_example_data()
    client.infer(model_name="simple", inputs=inputs, outputs=outputs)
    as_json = client.get_inference_statistics(model_name="simple", as_json=True)
    assert [s["name"] for s in as_json["model_stats"]] == ["simple"]
    assert int(as_json["model_stats"][0]["inference_count"]) >= 1
    everything = client.get_inference_statistics()
    assert sorted(s.name for s in everything.model_stats) == sorted(MODELS)
    version_one = client.get_inference_statistics(model_name="simple", model_version="1")
    assert [(s.name, s.version) for s in version_one.model_stats] == [("simple", "1")]


# The keepalive example: a client built with KeepAliveOptions; the custom-args example: one built from
# explicit gRPC channel arguments (1 MiB message limits). Both then infer with headers.
CLIENT_OPTIONS = {
    "keepalive_options": {
        "keepalive_options": grpcclient.KeepAliveOptions(
            keepalive_time_ms=2**31 - 1,
            keepalive_timeout_ms=20000,
            keepalive_permit_without_calls=False,
            http2_max_pings_without_data=2,
        )
    },
    "channel_args": {
        "channel_args": [
            ("grpc.max_send_message_length", 1024 * 1024),
            ("grpc.max_receive_message_length", 1024 * 1024),
            ("grpc.keepalive_time_ms", 2**31 - 1),
            ("grpc.keepalive_timeout_ms", 20000),
            ("grpc.keepalive_permit_without_calls", False),
            ("grpc.http2.max_pings_without_data", 2),
            ("grpc.dns_enable_srv_queries", 1),
        ]
    },
}


@pytest.mark.parametrize("options", list(CLIENT_OPTIONS))
def test_clients_built_with_keepalive_options_or_channel_args(server: ServerThread, options: str) -> None:
    client = grpcclient.InferenceServerClient(url=server.address, verbose=False, **CLIENT_OPTIONS[options])
    try:
        inputs, outputs, input0, input1 = simple_example_data()
        check_simple(
            client.infer(model_name="simple", inputs=inputs, outputs=outputs, headers={"test": "1"}),
            input0,
            input1,
        )
    finally:
        client.close()


# ------------------------------------------------------------------------------------------------------------
# async infer (callback) and the asyncio client


def test_async_infer_with_partial_callback(client: grpcclient.InferenceServerClient) -> None:
    """The async infer example: async_infer with a functools.partial callback collecting (result, error)."""
    inputs, outputs, input0, input1 = simple_example_data()
    user_data: list[Any] = []

    def callback(
        user_data: list[Any], result: grpcclient.InferResult | None, error: InferenceServerException | None
    ) -> None:
        user_data.append(error if error else result)

    client.async_infer(
        model_name="simple",
        inputs=inputs,
        callback=partial(callback, user_data),
        outputs=outputs,
        client_timeout=TIMEOUT_S,
    )
    deadline = time.monotonic() + TIMEOUT_S
    while not user_data and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(user_data) == 1, "the callback never ran"
    assert not isinstance(user_data[0], InferenceServerException), user_data[0]
    check_simple(user_data[0], input0, input1)


def test_aio_infer_statistics_and_concurrent_infers(server: ServerThread) -> None:
    """The asyncio infer example: await infer (timeout, headers, compression), statistics, then two infers at
    once with asyncio.gather."""
    inputs, outputs, input0, input1 = simple_example_data()

    async def main() -> tuple[Any, Any, Any, Any]:
        client = aioclient.InferenceServerClient(
            url=server.address,
            verbose=False,
            ssl=False,
            root_certificates=None,
            private_key=None,
            certificate_chain=None,
        )
        try:
            results = await client.infer(
                model_name="simple",
                inputs=inputs,
                outputs=outputs,
                client_timeout=TIMEOUT_S,
                headers={"test": "1"},
                compression_algorithm="gzip",
            )
            statistics = await client.get_inference_statistics(model_name="simple")
            result_1, result_2 = await asyncio.gather(
                client.infer(model_name="simple", inputs=inputs, outputs=None),
                client.infer(model_name="simple", inputs=inputs, outputs=None),
            )
            return results, statistics, result_1, result_2
        finally:
            await client.close()

    results, statistics, result_1, result_2 = asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
    assert len(statistics.model_stats) == 1 and statistics.model_stats[0].inference_count >= 1
    for result in (results, result_1, result_2):
        check_simple(result, input0, input1)


def test_aio_health_metadata_and_config(server: ServerThread) -> None:
    async def main() -> tuple[Any, ...]:
        async with aioclient.InferenceServerClient(url=server.address) as client:
            return (
                await client.is_server_live(),
                await client.is_server_ready(),
                await client.is_model_ready("simple"),
                await client.get_server_metadata(),
                await client.get_model_metadata("simple"),
                await client.get_model_config("simple"),
            )

    answers = asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
    live, ready, model_ready, server_metadata, metadata, config = answers
    assert live and ready and model_ready
    assert server_metadata.name == "hotwire"
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("INPUT0", "INT32", [-1, 16]),
        ("INPUT1", "INT32", [-1, 16]),
    ]
    assert config.config.name == "simple" and config.config.max_batch_size == 8


# ------------------------------------------------------------------------------------------------------------
# streaming


class UserData:
    def __init__(self) -> None:
        self.completed_requests: queue.Queue[Any] = queue.Queue()


def stream_callback(
    user_data: UserData, result: grpcclient.InferResult | None, error: InferenceServerException | None
) -> None:
    user_data.completed_requests.put(error if error else result)


def stream_feeds(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    return [
        (
            rng.integers(-1000, 1000, size=(1, 16), dtype=np.int32),
            rng.integers(-1000, 1000, size=(1, 16), dtype=np.int32),
        )
        for _ in range(count)
    ]


def as_inputs(input0: np.ndarray, input1: np.ndarray) -> list[grpcclient.InferInput]:
    inputs = [
        grpcclient.InferInput("INPUT0", list(input0.shape), "INT32"),
        grpcclient.InferInput("INPUT1", list(input1.shape), "INT32"),
    ]
    inputs[0].set_data_from_numpy(input0)
    inputs[1].set_data_from_numpy(input1)
    return inputs


def test_stream_infer_with_request_ids(server: ServerThread) -> None:
    """The streaming examples: a client used as a context manager, start_stream with a partial callback and a
    stream_timeout, async_stream_infer with outputs and request ids, responses collected from a queue."""
    feeds = stream_feeds(8)
    user_data = UserData()
    with grpcclient.InferenceServerClient(url=server.address, verbose=False) as client:
        client.start_stream(callback=partial(stream_callback, user_data), stream_timeout=TIMEOUT_S)
        for i, (input0, input1) in enumerate(feeds):
            client.async_stream_infer(
                model_name="simple",
                inputs=as_inputs(input0, input1),
                outputs=[
                    grpcclient.InferRequestedOutput("OUTPUT0"),
                    grpcclient.InferRequestedOutput("OUTPUT1"),
                ],
                request_id=f"1000_{i + 1}",
            )
        received = [user_data.completed_requests.get(timeout=TIMEOUT_S) for _ in feeds]
        client.stop_stream()
    errors = [item for item in received if isinstance(item, InferenceServerException)]
    assert not errors, errors
    by_id = {item.get_response().id: item for item in received}
    assert sorted(by_id) == sorted(f"1000_{i + 1}" for i in range(len(feeds)))
    for i, (input0, input1) in enumerate(feeds):
        check_simple(by_id[f"1000_{i + 1}"], input0, input1)


def test_stream_error_reaches_the_callback_and_the_stream_serves_on(server: ServerThread) -> None:
    user_data = UserData()
    ((input0, input1),) = stream_feeds(1)
    with grpcclient.InferenceServerClient(url=server.address) as client:
        client.start_stream(callback=partial(stream_callback, user_data), stream_timeout=TIMEOUT_S)
        client.async_stream_infer(
            model_name="no_such_model", inputs=as_inputs(input0, input1), request_id="bad"
        )
        client.async_stream_infer(model_name="simple", inputs=as_inputs(input0, input1), request_id="good")
        first = user_data.completed_requests.get(timeout=TIMEOUT_S)
        second = user_data.completed_requests.get(timeout=TIMEOUT_S)
        client.stop_stream()
    assert isinstance(first, InferenceServerException) and "no_such_model" in first.message()
    assert not isinstance(second, InferenceServerException), second
    assert second.get_response().id == "good"
    check_simple(second, input0, input1)


def test_aio_stream_infer_from_an_async_iterator(server: ServerThread) -> None:
    """The asyncio streaming example: stream_infer over an async generator of keyword dicts, responses read as
    (result, error) pairs."""
    feeds = stream_feeds(6)

    async def requests() -> AsyncIterator[dict[str, Any]]:
        for i, (input0, input1) in enumerate(feeds):
            inputs = [
                aioclient.InferInput("INPUT0", list(input0.shape), "INT32"),
                aioclient.InferInput("INPUT1", list(input1.shape), "INT32"),
            ]
            inputs[0].set_data_from_numpy(input0)
            inputs[1].set_data_from_numpy(input1)
            outputs = [aioclient.InferRequestedOutput("OUTPUT0"), aioclient.InferRequestedOutput("OUTPUT1")]
            yield {
                "model_name": "simple",
                "inputs": inputs,
                "outputs": outputs,
                "request_id": f"2000_{i + 1}",
            }

    async def main() -> list[tuple[Any, Any]]:
        received: list[tuple[Any, Any]] = []
        async with aioclient.InferenceServerClient(url=server.address, verbose=False) as client:
            response_iterator = client.stream_infer(inputs_iterator=requests(), stream_timeout=TIMEOUT_S)
            async for result, error in response_iterator:
                received.append((result, error))
                if len(received) == len(feeds):
                    break
        return received

    received = asyncio.run(asyncio.wait_for(main(), TIMEOUT_S))
    assert [error for _, error in received] == [None] * len(feeds)
    by_id = {result.get_response().id: result for result, _ in received}
    for i, (input0, input1) in enumerate(feeds):
        check_simple(by_id[f"2000_{i + 1}"], input0, input1)


# ------------------------------------------------------------------------------------------------------------
# strings (BYTES)


def test_string_infer(client: grpcclient.InferenceServerClient) -> None:
    """The string infer example: decimal strings in, their sum and difference as decimal strings out."""
    in0 = np.expand_dims(np.arange(0, 16, dtype=np.int32), axis=0)
    in1 = np.ones(shape=(1, 16), dtype=np.int32)
    input0_data = np.array([str(x).encode() for x in in0.reshape(in0.size)], dtype=np.object_).reshape(1, 16)
    input1_data = np.array([str(x).encode() for x in in1.reshape(in1.size)], dtype=np.object_).reshape(1, 16)
    inputs = [
        grpcclient.InferInput("INPUT0", [1, 16], "BYTES"),
        grpcclient.InferInput("INPUT1", [1, 16], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(input0_data)
    inputs[1].set_data_from_numpy(input1_data)
    outputs = [grpcclient.InferRequestedOutput("OUTPUT0"), grpcclient.InferRequestedOutput("OUTPUT1")]

    results = client.infer(model_name="simple_string", inputs=inputs, outputs=outputs)
    output0_data, output1_data = results.as_numpy("OUTPUT0"), results.as_numpy("OUTPUT1")
    assert output0_data is not None and output1_data is not None
    assert output0_data.dtype == np.object_ and output0_data.shape == (1, 16)
    np.testing.assert_array_equal(output0_data.astype(np.int64), in0 + in1)
    np.testing.assert_array_equal(output1_data.astype(np.int64), in0 - in1)
    expected = reference("simple_string", {"INPUT0": input0_data, "INPUT1": input1_data})
    assert output0_data.tolist() == expected["OUTPUT0"].tolist()
    assert output1_data.tolist() == expected["OUTPUT1"].tolist()


@pytest.mark.parametrize(
    "np_array",
    [
        np.array([b"he\x00llo" for _ in range(16)], dtype=np.object_).reshape([1, 16]),
        np.array([b"\x00\x01\x02\x03" for _ in range(16)], dtype=np.bytes_).reshape([1, 16]),
    ],
    ids=["object-with-null-chars", "numpy-bytes"],
)
def test_bytes_identity_infer(client: grpcclient.InferenceServerClient, np_array: np.ndarray) -> None:
    """The string example's identity calls: BYTES with embedded NULs, as an object array and as np.bytes_."""
    inputs = [grpcclient.InferInput("INPUT0", list(np_array.shape), "BYTES")]
    inputs[0].set_data_from_numpy(np_array)
    results = client.infer(
        model_name="simple_identity", inputs=inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT0")]
    )
    output = results.as_numpy("OUTPUT0")
    assert output is not None and output.shape == np_array.shape
    assert output.tolist() == np_array.astype(np.object_).tolist()
    assert output.tolist() == reference("simple_identity", {"INPUT0": np_array})["OUTPUT0"].tolist()


# ------------------------------------------------------------------------------------------------------------
# the generated gRPC stubs used directly


@pytest.fixture
def raw_stub(server: ServerThread) -> Iterator[service_pb2_grpc.GRPCInferenceServiceStub]:
    channel = grpc.insecure_channel(server.address)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def test_raw_stub_health_metadata_config_and_infer(
    raw_stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    """The plain gRPC client example: every metadata RPC with tritonclient's own messages, then ModelInfer
    with a request id and raw_input_contents."""
    model_name, model_version = "simple", ""
    assert raw_stub.ServerLive(service_pb2.ServerLiveRequest(), timeout=TIMEOUT_S).live
    assert raw_stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=TIMEOUT_S).ready
    assert raw_stub.ModelReady(
        service_pb2.ModelReadyRequest(name=model_name, version=model_version), timeout=TIMEOUT_S
    ).ready
    assert raw_stub.ServerMetadata(service_pb2.ServerMetadataRequest(), timeout=TIMEOUT_S).name == "hotwire"
    metadata = raw_stub.ModelMetadata(
        service_pb2.ModelMetadataRequest(name=model_name, version=model_version), timeout=TIMEOUT_S
    )
    assert (metadata.name, list(metadata.versions)) == ("simple", ["1"])
    config = raw_stub.ModelConfig(
        service_pb2.ModelConfigRequest(name=model_name, version=model_version), timeout=TIMEOUT_S
    ).config
    assert (config.name, config.max_batch_size) == ("simple", 8)
    assert [t.name for t in config.input] == ["INPUT0", "INPUT1"]

    request = service_pb2.ModelInferRequest()
    request.model_name = model_name
    request.model_version = model_version
    request.id = "my request id"
    input0_data = np.arange(16, dtype=np.int32).reshape(1, 16)
    input1_data = np.full((1, 16), 3, dtype=np.int32)
    for name in ("INPUT0", "INPUT1"):
        tensor = service_pb2.ModelInferRequest().InferInputTensor()
        tensor.name = name
        tensor.datatype = "INT32"
        tensor.shape.extend([1, 16])
        request.inputs.extend([tensor])
    output = service_pb2.ModelInferRequest().InferRequestedOutputTensor()
    output.name = "OUTPUT1"
    request.outputs.extend([output])
    request.raw_input_contents.extend([input0_data.tobytes(), input1_data.tobytes()])
    response = raw_stub.ModelInfer(request, timeout=TIMEOUT_S)
    assert (response.id, response.model_name, response.model_version) == ("my request id", "simple", "1")
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [("OUTPUT1", "INT32", [1, 16])]
    got = np.frombuffer(response.raw_output_contents[0], dtype=np.int32).reshape(1, 16)
    np.testing.assert_array_equal(got, input0_data - input1_data)


def _typed_input(name: str, datatype: str) -> service_pb2.ModelInferRequest.InferInputTensor:
    tensor = service_pb2.ModelInferRequest().InferInputTensor()
    tensor.name = name
    tensor.datatype = datatype
    tensor.shape.extend([1, 16])
    return tensor


def _requested(*names: str) -> list[service_pb2.ModelInferRequest.InferRequestedOutputTensor]:
    outputs = []
    for name in names:
        output = service_pb2.ModelInferRequest().InferRequestedOutputTensor()
        output.name = name
        outputs.append(output)
    return outputs


def test_explicit_int_contents_and_mixing_with_raw_is_refused(
    raw_stub: service_pb2_grpc.GRPCInferenceServiceStub,
) -> None:
    """The explicit int-content example: INT32 inputs in contents.int_contents; then one input split between
    raw_input_contents and contents, which must be refused naming the input."""
    request = service_pb2.ModelInferRequest()
    request.model_name, request.model_version = "simple", ""
    input0_data = [i for i in range(16)]
    input1_data = [1 for _ in range(16)]
    input0, input1 = _typed_input("INPUT0", "INT32"), _typed_input("INPUT1", "INT32")
    input0.contents.int_contents[:] = input0_data
    input1.contents.int_contents[:] = input1_data
    request.inputs.extend([input0, input1])
    request.outputs.extend(_requested("OUTPUT0", "OUTPUT1"))

    response = raw_stub.ModelInfer(request, timeout=TIMEOUT_S)
    assert len(response.outputs) == 2
    results = [
        np.frombuffer(response.raw_output_contents[i], dtype=np.int32).reshape(list(output.shape))
        for i, output in enumerate(response.outputs)
    ]
    np.testing.assert_array_equal(results[0], [np.add(input0_data, input1_data)])
    np.testing.assert_array_equal(results[1], [np.subtract(input0_data, input1_data)])

    request.raw_input_contents.extend([np.array(input0_data[0:8]).tobytes()])
    request.inputs[0].contents.int_contents[:] = input0_data[8:]
    with pytest.raises(grpc.RpcError) as caught:
        raw_stub.ModelInfer(request, timeout=TIMEOUT_S)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "INPUT0" in str(caught.value.details())


def test_explicit_bytes_contents(raw_stub: service_pb2_grpc.GRPCInferenceServiceStub) -> None:
    """The explicit byte-content example: BYTES inputs in contents.bytes_contents, outputs read with
    deserialize_bytes_tensor."""
    request = service_pb2.ModelInferRequest()
    request.model_name, request.model_version = "simple_string", ""
    input0, input1 = _typed_input("INPUT0", "BYTES"), _typed_input("INPUT1", "BYTES")
    for i in range(16):
        input0.contents.bytes_contents.append(f"{i}".encode())
        input1.contents.bytes_contents.append(b"1")
    request.inputs.extend([input0, input1])
    request.outputs.extend(_requested("OUTPUT0", "OUTPUT1"))

    response = raw_stub.ModelInfer(request, timeout=TIMEOUT_S)
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("OUTPUT0", "BYTES", [1, 16]),
        ("OUTPUT1", "BYTES", [1, 16]),
    ]
    results = [
        np.resize(utils.deserialize_bytes_tensor(response.raw_output_contents[i]), list(output.shape))
        for i, output in enumerate(response.outputs)
    ]
    assert [int(v) for v in results[0][0]] == [i + 1 for i in range(16)]
    assert [int(v) for v in results[1][0]] == [i - 1 for i in range(16)]


# ------------------------------------------------------------------------------------------------------------
# health and metadata


def test_health_and_metadata_with_headers(client: grpcclient.InferenceServerClient) -> None:
    """The health/metadata example: liveness and metadata with extra headers, readiness, server and model
    metadata, an unknown model's metadata, the model config."""
    assert client.is_server_live(headers={"test": "1", "dummy": "2"})
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    assert client.get_server_metadata().name == "hotwire"
    metadata = client.get_model_metadata("simple", headers={"test": "1", "dummy": "2"})
    assert metadata.name == "simple"
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("OUTPUT0", "INT32", [-1, 16]),
        ("OUTPUT1", "INT32", [-1, 16]),
    ]
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("wrong_model_name")
    assert caught.value.status() == "StatusCode.NOT_FOUND"
    assert "Request for unknown model: 'wrong_model_name' is not found" in caught.value.message()  # as Triton
    assert client.get_model_config("simple").config.name == "simple"


# ------------------------------------------------------------------------------------------------------------
# model control


def test_model_control(running_server: StartServer, tmp_path: Path) -> None:
    """The model control example, in explicit mode: repository index, load, a load with a malformed config
    override, a load with a valid override, unload, a load with an unwritable file parameter, an unknown
    model."""
    server = running_server(_write_repository(tmp_path), model_control_mode="explicit")
    client = grpcclient.InferenceServerClient(url=server.address, verbose=False)
    try:
        index = client.get_model_repository_index()
        assert sorted(m.name for m in index.models) == sorted(MODELS)
        assert not client.is_model_ready("simple")

        client.load_model("simple")
        assert client.is_model_ready("simple")
        inputs, outputs, input0, input1 = simple_example_data()
        check_simple(client.infer(model_name="simple", inputs=inputs, outputs=outputs), input0, input1)
        index = client.get_model_repository_index()
        assert [(m.name, m.version) for m in index.models if m.state == "READY"] == [("simple", "1")]

        with pytest.raises(InferenceServerException) as caught:
            client.load_model("simple", config='"parameters": {"config": {{"max_batch_size": "16"}}}')
        assert "failed to load" in caught.value.message()
        assert client.is_model_ready("simple")  # a failed load leaves the loaded version serving

        client.load_model("simple", config='{"max_batch_size":"16"}')
        assert client.get_model_config("simple").config.max_batch_size == 16
        check_simple(client.infer(model_name="simple", inputs=inputs, outputs=outputs), input0, input1)

        client.unload_model("simple")
        assert not client.is_model_ready("simple")

        with pytest.raises(InferenceServerException) as caught:
            client.load_model("simple", config="{}", files={"file:" + "A" * 256: b"a"})
        assert caught.value.status() == "StatusCode.INTERNAL"
        assert "failed to poll from model repository" in caught.value.message()
        assert client.is_server_live()

        # the rejected upload left nothing behind: the repository's model and a config override still load
        client.load_model("simple", config='{"max_batch_size":"4"}')
        assert client.get_model_config("simple").config.max_batch_size == 4
        check_simple(client.infer(model_name="simple", inputs=inputs, outputs=outputs), input0, input1)

        with pytest.raises(InferenceServerException) as caught:
            client.load_model("wrong_model_name")
        assert "failed to load" in caught.value.message()
        assert "wrong_model_name" in caught.value.message()
    finally:
        client.close()


def test_load_model_with_files(running_server: StartServer, tmp_path: Path) -> None:
    """load_model with `config` and `files`: the model's bytes uploaded, not read from the repository."""
    repository = tmp_path / "repo"
    repository.mkdir()
    server = running_server(repository, model_control_mode="explicit")
    client = grpcclient.InferenceServerClient(url=server.address)
    try:
        config = (
            '{"name": "uploaded", "backend": "onnxruntime", "max_batch_size": 8, '
            '"input": [{"name": "INPUT0", "data_type": "TYPE_INT32", "dims": [16]}, '
            '{"name": "INPUT1", "data_type": "TYPE_INT32", "dims": [16]}], '
            '"output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [16]}, '
            '{"name": "OUTPUT1", "data_type": "TYPE_INT32", "dims": [16]}]}'
        )
        client.load_model("uploaded", config=config, files={"file:1/model.onnx": SIMPLE.SerializeToString()})
        assert client.is_model_ready("uploaded")
        inputs, outputs, input0, input1 = simple_example_data()
        check_simple(client.infer(model_name="uploaded", inputs=inputs, outputs=outputs), input0, input1)
        assert len(client.get_inference_statistics(model_name="uploaded").model_stats) == 1

        # a rejected upload leaves the previous one serving, and in place for reloads; its own files are gone
        upload_root = server.app.control.upload_root
        uploads = set(upload_root.iterdir())
        assert len(uploads) == 1  # the upload that serves
        with pytest.raises(InferenceServerException) as caught:
            client.load_model("uploaded", config=config, files={"file:1/model.onnx": b"not an onnx model"})
        assert "failed to load" in caught.value.message()
        assert set(upload_root.iterdir()) == uploads
        check_simple(client.infer(model_name="uploaded", inputs=inputs, outputs=outputs), input0, input1)
        client.load_model("uploaded", config=config)  # config only: reads the files of the upload that loaded
        check_simple(client.infer(model_name="uploaded", inputs=inputs, outputs=outputs), input0, input1)
        client.unload_model("uploaded")
        assert not client.is_model_ready("uploaded")
    finally:
        client.close()
