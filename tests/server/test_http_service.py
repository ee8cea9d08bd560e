"""The HTTP/REST frontend against a real hotwire server on 127.0.0.1: NVIDIA's own client (tritonclient.http)
making every call the gRPC interop suite makes, the same results as the gRPC path for every datatype, raw HTTP
for what tritonclient never sends (bad bodies, wrong methods, oversized bodies), and `hotwire serve`'s HTTP
port under --workers, -1 and a port already taken. Results are compared with in-process ONNX Runtime."""

from __future__ import annotations

import gzip
import http.client
import json
import re
import socket
import statistics
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pytest
import tritonclient.grpc as tg
import tritonclient.http as th
from tritonclient.utils import InferenceServerException

from onnx_models import (
    ONNX_TYPES,
    SIMPLE_CONFIG,
    add_sub,
    bytes_identity,
    identity_all_types,
    ort_reference,
    simple_inputs,
    write_model,
)
from server_harness import ServerThread

SIMPLE = add_sub()
IDENTITY = identity_all_types(dims=(3,))
DATATYPES = list(ONNX_TYPES)
ODD_NAME = "name with space é"  # reaches the server percent-encoded, as UTF-8
MAX_MESSAGE_BYTES = 1 << 20
TIMEOUT_S = 30.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root: Path = tmp_path_factory.mktemp("http_repo")
    write_model(root, "simple", SIMPLE, config=SIMPLE_CONFIG)
    write_model(root, "identity", IDENTITY)
    write_model(root, ODD_NAME, SIMPLE)
    write_model(root, "bytes_identity", bytes_identity())
    thread = ServerThread(root, max_message_bytes=MAX_MESSAGE_BYTES).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def client(server: ServerThread) -> Iterator[th.InferenceServerClient]:
    triton = th.InferenceServerClient(
        server.http_address, concurrency=4, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S
    )
    yield triton
    triton.close()


@pytest.fixture(scope="module")
def grpc_client(server: ServerThread) -> Iterator[tg.InferenceServerClient]:
    triton = tg.InferenceServerClient(server.address)
    yield triton
    triton.close()


def every_datatype(rows: int) -> dict[str, np.ndarray]:
    """Every datatype with its edge values: integer limits, NaN, -inf and -0.0, empty and multi-byte UTF-8."""
    rng = np.random.default_rng(rows)
    arrays: dict[str, np.ndarray] = {}
    for d in DATATYPES:
        if d == "BOOL":
            array = rng.integers(0, 2, size=(rows, 3)).astype(bool)
            array[0] = [True, False, True]
        elif d == "BYTES":
            words = [b"", "h\u00e9llo".encode(), "\u65e5\u672c".encode(), b"x" * 1000, b"a\x00b", b"plain"]
            array = np.array(
                [[words[(r * 3 + c) % len(words)] for c in range(3)] for r in range(rows)], dtype=object
            )
        else:
            dtype = np.dtype(th.triton_to_np_dtype(d))
            if dtype.kind in "iu":
                info = np.iinfo(dtype)
                array = rng.integers(info.min, info.max, size=(rows, 3), dtype=dtype, endpoint=True)
                array[0] = [info.min, info.max, 0]
            else:
                array = (rng.standard_normal((rows, 3)) * 100).astype(dtype)
                array[0] = [np.nan, -np.inf, -0.0]
        arrays[f"in_{d}"] = array
    return arrays


def http_inputs(
    arrays: dict[str, np.ndarray], binary: bool = True, datatypes: dict[str, str] | None = None
) -> list[th.InferInput]:
    inputs = []
    for name, array in arrays.items():
        datatype = (datatypes or {}).get(name) or th.np_to_triton_dtype(array.dtype)
        tensor = th.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


def grpc_inputs(arrays: dict[str, np.ndarray]) -> list[tg.InferInput]:
    inputs = []
    for name, array in arrays.items():
        tensor = tg.InferInput(name, list(array.shape), tg.np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


def as_bytes(array: np.ndarray) -> np.ndarray:
    """A BYTES output as bytes elements: tritonclient.http gives JSON BYTES outputs as str."""
    return np.vectorize(lambda v: v.encode() if isinstance(v, str) else v, otypes=[object])(array)


def assert_same(got: np.ndarray | None, want: np.ndarray, name: str) -> None:
    """Equal shape, dtype and bytes (NaN, -0.0 included); BYTES element for element."""
    assert got is not None, name
    assert got.shape == want.shape, name
    if want.dtype == object:
        assert as_bytes(got).tolist() == want.tolist(), name
    else:
        assert got.dtype == want.dtype, name
        assert got.tobytes() == want.tobytes(), f"{name}: {got} != {want}"


def output_encodings(result: th.InferResult) -> dict[str, str]:
    """How each output came back: 'binary' (binary_data_size) or 'json' (data)."""
    return {
        o["name"]: "binary" if "binary_data_size" in o.get("parameters", {}) else "json"
        for o in result.get_response()["outputs"]
    }


def http_error(call: Any, *args: Any, **kwargs: Any) -> InferenceServerException:
    with pytest.raises(InferenceServerException) as info:
        call(*args, **kwargs)
    return info.value


# ------------------------------------------------------------------------------------------------------------
# tritonclient.http: health, metadata, config


def test_server_and_model_readiness(client) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    assert client.is_model_ready("simple", "1")
    assert client.is_model_ready("identity")
    assert client.is_model_ready(ODD_NAME)
    assert not client.is_model_ready("no_such_model")
    assert not client.is_model_ready("simple", "2")


def test_server_metadata(client) -> None:
    metadata = client.get_server_metadata()
    assert metadata["name"] == "hotwire"
    assert metadata["version"]
    assert {"model_configuration", "model_repository", "statistics"} <= set(metadata["extensions"])


def test_model_metadata_simple(client) -> None:
    metadata = client.get_model_metadata("simple")
    assert metadata["name"] == "simple"
    assert metadata["versions"] == ["1"]
    assert metadata["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("INPUT0", "FP32", [-1, 16]),
        ("INPUT1", "FP32", [-1, 16]),
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == [
        ("OUTPUT0", "FP32", [-1, 16]),
        ("OUTPUT1", "FP32", [-1, 16]),
    ]
    assert client.get_model_metadata("simple", model_version="1") == metadata


def test_model_metadata_every_datatype(client) -> None:
    metadata = client.get_model_metadata("identity", model_version="1")
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        (f"in_{d}", d, [-1, 3]) for d in DATATYPES
    ]
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["outputs"]] == [
        (f"out_{d}", d, [-1, 3]) for d in DATATYPES
    ]


def test_model_config(client) -> None:
    """Triton's HTTP binding: the config itself (not wrapped), numbers as JSON numbers, enums by name."""
    config = client.get_model_config("simple")
    assert config["name"] == "simple"
    assert config["max_batch_size"] == 8 and type(config["max_batch_size"]) is int
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("INPUT0", "TYPE_FP32", [16]),
        ("INPUT1", "TYPE_FP32", [16]),
    ]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [
        ("OUTPUT0", "TYPE_FP32", [16]),
        ("OUTPUT1", "TYPE_FP32", [16]),
    ]
    assert all(type(d) is int for t in config["input"] + config["output"] for d in t["dims"])
    assert "dynamic_batching" in config
    assert [(g["count"], g["kind"]) for g in config["instance_group"]] == [(1, "KIND_CPU")]
    assert client.get_model_config("simple", model_version="1") == config


def test_model_config_completed_from_graph(client) -> None:
    config = client.get_model_config("identity")
    assert config["max_batch_size"] == 32 and type(config["max_batch_size"]) is int
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        (f"in_{d}", "TYPE_STRING" if d == "BYTES" else f"TYPE_{d}", [3]) for d in DATATYPES
    ]
    assert [t["name"] for t in config["output"]] == [f"out_{d}" for d in DATATYPES]


def test_metadata_and_config_of_unknown_model_are_404(client) -> None:
    for call in (client.get_model_metadata, client.get_model_config):
        error = http_error(call, "no_such_model")
        assert error.status() == "404"
        assert "no_such_model" in error.message()
    error = http_error(client.get_model_metadata, "simple", model_version="7")
    assert error.status() == "404"
    assert "7" in error.message()


# ------------------------------------------------------------------------------------------------------------
# tritonclient.http: inference


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_simple(client, binary: bool) -> None:
    feeds = simple_inputs(3, seed=1)
    outputs = [
        th.InferRequestedOutput("OUTPUT0", binary_data=binary),
        th.InferRequestedOutput("OUTPUT1", binary_data=binary),
    ]
    result = client.infer("simple", http_inputs(feeds, binary), outputs=outputs, request_id="req-1")
    response = result.get_response()
    assert response["id"] == "req-1"
    assert response["model_name"] == "simple"
    assert response["model_version"] == "1"
    assert output_encodings(result) == dict.fromkeys(["OUTPUT0", "OUTPUT1"], "binary" if binary else "json")
    for name, want in ort_reference(SIMPLE, feeds).items():
        assert_same(result.as_numpy(name), want, name)
    np.testing.assert_allclose(result.as_numpy("OUTPUT1"), feeds["INPUT0"] - feeds["INPUT1"])


def test_infer_without_requested_outputs_gets_every_output_in_binary(client) -> None:
    """tritonclient.http then asks with binary_data_output: true."""
    feeds = simple_inputs(2, seed=4)
    result = client.infer("simple", http_inputs(feeds, binary=False))
    assert output_encodings(result) == {"OUTPUT0": "binary", "OUTPUT1": "binary"}
    for name, want in ort_reference(SIMPLE, feeds).items():
        assert_same(result.as_numpy(name), want, name)


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_infer_with_compression(client, algorithm: str) -> None:
    """tritonclient.http's request_compression_algorithm (Content-Encoding) and response_compression_algorithm
    (Accept-Encoding: the server may answer uncompressed)."""
    feeds = simple_inputs(3, seed=6)
    for binary in (True, False):
        result = client.infer(
            "simple",
            http_inputs(feeds, binary),
            request_compression_algorithm=algorithm,
            response_compression_algorithm=algorithm,
        )
        for name, want in ort_reference(SIMPLE, feeds).items():
            assert_same(result.as_numpy(name), want, name)


def test_infer_requested_output_subset(client) -> None:
    feeds = simple_inputs(1, seed=2)
    result = client.infer("simple", http_inputs(feeds), outputs=[th.InferRequestedOutput("OUTPUT1")])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["OUTPUT1"]
    assert result.as_numpy("OUTPUT0") is None
    assert_same(result.as_numpy("OUTPUT1"), ort_reference(SIMPLE, feeds)["OUTPUT1"], "OUTPUT1")


def test_classification_outputs_are_refused_not_ignored(client) -> None:
    error = http_error(
        client.infer,
        "simple",
        http_inputs(simple_inputs(2, seed=3)),
        outputs=[th.InferRequestedOutput("OUTPUT0", class_count=2)],
    )
    assert error.status() == "400"
    assert "output 'OUTPUT0'" in error.message() and "classification" in error.message()


@pytest.mark.parametrize("inputs_binary", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("outputs_binary", [True, False], ids=["binary-out", "json-out"])
def test_infer_every_datatype(client, inputs_binary: bool, outputs_binary: bool) -> None:
    """Every datatype, FP16 and BYTES included, in either encoding each way (tritonclient.http sends FP16 in
    JSON as numbers and BYTES in JSON as UTF-8 strings)."""
    feeds = every_datatype(rows=4)
    outputs = [th.InferRequestedOutput(f"out_{d}", binary_data=outputs_binary) for d in DATATYPES]
    result = client.infer("identity", http_inputs(feeds, inputs_binary), outputs=outputs)
    assert [(o["name"], o["datatype"], o["shape"]) for o in result.get_response()["outputs"]] == [
        (f"out_{d}", d, [4, 3]) for d in DATATYPES
    ]
    assert set(output_encodings(result).values()) == {"binary" if outputs_binary else "json"}
    expected = ort_reference(IDENTITY, feeds)
    for d in DATATYPES:  # identity: exactly what was sent, bit for bit
        assert_same(result.as_numpy(f"out_{d}"), expected[f"out_{d}"], d)
        assert_same(result.as_numpy(f"out_{d}"), feeds[f"in_{d}"], d)


def test_async_infer(client) -> None:
    cases = [simple_inputs(1 + i % 3, seed=20 + i) for i in range(6)]
    pending = [
        client.async_infer("simple", http_inputs(feeds), request_id=f"async-{i}")
        for i, feeds in enumerate(cases)
    ]
    for i, (request, feeds) in enumerate(zip(pending, cases)):
        result = request.get_result(timeout=TIMEOUT_S)
        assert result.get_response()["id"] == f"async-{i}"
        for name, want in ort_reference(SIMPLE, feeds).items():
            assert_same(result.as_numpy(name), want, name)


def test_async_infer_error(client) -> None:
    bad = np.zeros((1, 15), dtype=np.float32)
    request = client.async_infer("simple", http_inputs({"INPUT0": bad, "INPUT1": bad}))
    error = http_error(request.get_result, timeout=TIMEOUT_S)
    assert error.status() == "400"
    assert "INPUT0" in error.message()


def test_wrong_shape_is_400(client) -> None:
    bad = np.zeros((1, 15), dtype=np.float32)
    error = http_error(client.infer, "simple", http_inputs({"INPUT0": bad, "INPUT1": bad}))
    assert error.status() == "400"
    assert "INPUT0" in error.message()


def test_wrong_datatype_is_400(client) -> None:
    feeds = {"INPUT0": np.zeros((1, 16), dtype=np.int32), "INPUT1": np.zeros((1, 16), dtype=np.float32)}
    for binary in (True, False):
        error = http_error(client.infer, "simple", http_inputs(feeds, binary))
        assert error.status() == "400"
        assert "INPUT0" in error.message() and "INT32" in error.message()


def test_unknown_input_and_output_are_400(client) -> None:
    feeds = simple_inputs(1)
    feeds["INPUT9"] = feeds["INPUT0"]
    error = http_error(client.infer, "simple", http_inputs(feeds))
    assert error.status() == "400"
    assert "INPUT9" in error.message()
    error = http_error(
        client.infer, "simple", http_inputs(simple_inputs(1)), outputs=[th.InferRequestedOutput("NOPE")]
    )
    assert error.status() == "400"
    assert "NOPE" in error.message()


def test_unknown_model_and_version_are_404(client) -> None:
    error = http_error(client.infer, "no_such_model", http_inputs(simple_inputs(1)))
    assert error.status() == "404"
    assert "no_such_model" in error.message()
    error = http_error(client.infer, "simple", http_inputs(simple_inputs(1)), model_version="7")
    assert error.status() == "404"
    assert "7" in error.message()


def test_odd_model_name_through_tritonclient(client) -> None:
    """tritonclient.http percent-encodes the name in the path."""
    assert client.get_model_metadata(ODD_NAME)["name"] == ODD_NAME
    feeds = simple_inputs(1, seed=5)
    result = client.infer(ODD_NAME, http_inputs(feeds))
    assert result.get_response()["model_name"] == ODD_NAME
    assert_same(result.as_numpy("OUTPUT0"), ort_reference(SIMPLE, feeds)["OUTPUT0"], "OUTPUT0")


def _counts(client: th.InferenceServerClient, model: str) -> tuple[int, int, int]:
    (stats,) = client.get_inference_statistics(model, "1")["model_stats"]
    return (
        stats["inference_stats"]["success"]["count"],
        stats["inference_stats"]["fail"]["count"],
        stats["inference_count"],
    )


def test_statistics_count_inferences(client) -> None:
    success, fail, inferences = _counts(client, "simple")
    rows = [1, 2, 3, 1, 2]
    for i, n in enumerate(rows):
        client.infer("simple", http_inputs(simple_inputs(n, seed=30 + i)))
    bad = np.zeros((1, 15), dtype=np.float32)
    http_error(client.infer, "simple", http_inputs({"INPUT0": bad, "INPUT1": bad}))
    assert _counts(client, "simple") == (success + len(rows), fail + 1, inferences + sum(rows))

    (stats,) = client.get_inference_statistics("simple")["model_stats"]
    assert (stats["name"], stats["version"]) == ("simple", "1")
    assert all(
        type(stats["inference_stats"][key][field]) is int
        for key in ("success", "queue")
        for field in ("count", "ns")
    )
    assert stats["inference_stats"]["success"]["ns"] > 0 and stats["last_inference"] > 0
    every = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in every} == {"simple", "identity", "bytes_identity", ODD_NAME}
    assert http_error(client.get_inference_statistics, "no_such_model").status() == "404"


def test_repository_index(client) -> None:
    index = client.get_model_repository_index()
    assert sorted((m["name"], m["version"], m["state"]) for m in index) == sorted(
        (name, "1", "READY") for name in ("simple", "identity", "bytes_identity", ODD_NAME)
    )


def test_load_refused_outside_explicit_mode(client) -> None:
    error = http_error(client.load_model, "simple")
    assert error.status() == "400"
    assert "explicit" in error.message()


OFFSET_CONFIG = json.dumps(
    {
        "name": "uploaded",
        "backend": "onnxruntime",
        "max_batch_size": 4,
        "input": [{"name": n, "data_type": "TYPE_FP32", "dims": [16]} for n in ("INPUT0", "INPUT1")],
        "output": [{"name": n, "data_type": "TYPE_FP32", "dims": [16]} for n in ("OUTPUT0", "OUTPUT1")],
    }
)


def test_model_control_in_explicit_mode(running_server, tmp_path: Path) -> None:
    """load_model (plain, with a config override, with uploaded files, base64-encoded by tritonclient.http)
    and unload_model, each checked by what the server then serves."""
    write_model(tmp_path, "simple", SIMPLE, config=SIMPLE_CONFIG)
    server = running_server(tmp_path, model_control_mode="explicit")
    client = th.InferenceServerClient(
        server.http_address, connection_timeout=TIMEOUT_S, network_timeout=TIMEOUT_S
    )
    try:
        index = client.get_model_repository_index()
        assert [(m["name"], m["state"]) for m in index] == [("simple", "UNAVAILABLE")]
        assert not client.is_model_ready("simple")
        client.load_model("simple")
        assert client.is_model_ready("simple")
        feeds = simple_inputs(2, seed=40)
        result = client.infer("simple", http_inputs(feeds))
        assert_same(result.as_numpy("OUTPUT0"), ort_reference(SIMPLE, feeds)["OUTPUT0"], "OUTPUT0")
        assert [
            (m["name"], m["version"], m["state"])
            for m in client.get_model_repository_index()
            if m["state"] == "READY"
        ] == [("simple", "1", "READY")]

        client.load_model("simple", config='{"max_batch_size": 2}')
        assert client.get_model_config("simple")["max_batch_size"] == 2
        error = http_error(client.load_model, "simple", config="{not json")
        assert "failed to load" in error.message()
        assert client.is_model_ready("simple")  # a failed load leaves the loaded version serving

        client.unload_model("simple")
        assert not client.is_model_ready("simple")
        error = http_error(client.infer, "simple", http_inputs(feeds))
        assert (error.status(), "'simple'" in error.message()) == ("503", True), error

        offset = add_sub(offset=7.0)
        client.load_model(
            "uploaded", config=OFFSET_CONFIG, files={"file:1/model.onnx": offset.SerializeToString()}
        )
        assert client.is_model_ready("uploaded")
        assert client.get_model_config("uploaded")["max_batch_size"] == 4
        result = client.infer("uploaded", http_inputs(feeds))
        assert_same(result.as_numpy("OUTPUT0"), ort_reference(offset, feeds)["OUTPUT0"], "OUTPUT0")
        client.unload_model("uploaded")
        assert not client.is_model_ready("uploaded")

        error = http_error(client.load_model, "no_such_model")
        assert "no_such_model" in error.message()

        raw = Raw(server)
        try:
            for parameters, expected in (
                ({"file:1/model.onnx": "not base64!"}, "not valid base64"),
                ({"file:1/model.onnx": 3}, "base64"),
                ("all", "JSON object"),
            ):
                response = raw(
                    "POST",
                    "/v2/repository/models/uploaded/load",
                    json.dumps({"parameters": parameters, "config": OFFSET_CONFIG}).encode(),
                )
                assert response.status == 400 and expected in response.error(), response.body
            assert not client.is_model_ready("uploaded")
        finally:
            raw.close()
    finally:
        client.close()


# ------------------------------------------------------------------------------------------------------------
# the same results as the gRPC path


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_http_and_grpc_give_identical_arrays_for_every_datatype(client, grpc_client, binary: bool) -> None:
    feeds = every_datatype(rows=5)
    outputs = [th.InferRequestedOutput(f"out_{d}", binary_data=binary) for d in DATATYPES]
    over_http = client.infer("identity", http_inputs(feeds, binary), outputs=outputs)
    over_grpc = grpc_client.infer("identity", grpc_inputs(feeds))
    for d in DATATYPES:
        assert_same(over_http.as_numpy(f"out_{d}"), over_grpc.as_numpy(f"out_{d}"), d)
    simple = simple_inputs(4, seed=50)
    outputs = [th.InferRequestedOutput(n, binary_data=binary) for n in ("OUTPUT0", "OUTPUT1")]
    over_http = client.infer("simple", http_inputs(simple, binary), outputs=outputs)
    over_grpc = grpc_client.infer("simple", grpc_inputs(simple))
    for name in ("OUTPUT0", "OUTPUT1"):
        assert_same(over_http.as_numpy(name), over_grpc.as_numpy(name), name)


# ------------------------------------------------------------------------------------------------------------
# raw HTTP: what tritonclient never sends


class Response:
    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = response.headers
        self.body = response.read()

    def json(self) -> Any:
        assert self.headers["Content-Type"] == "application/json", self.headers
        return json.loads(self.body)

    def error(self) -> str:
        value = self.json()
        assert list(value) == ["error"] and isinstance(value["error"], str), value
        return value["error"]


class Raw:
    """One keep-alive HTTP/1.1 connection to the server (http.client)."""

    def __init__(self, server: ServerThread) -> None:
        host, port = server.http_address.rsplit(":", 1)
        self.connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)

    def __call__(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Response:
        self.connection.request(method, path, body=body, headers=headers or {})
        return Response(self.connection.getresponse())

    def close(self) -> None:
        self.connection.close()


@pytest.fixture
def raw(server: ServerThread) -> Iterator[Raw]:
    connection = Raw(server)
    yield connection
    connection.close()


def json_request(feeds: dict[str, np.ndarray], nested: bool = False, **fields: Any) -> bytes:
    def data(array: np.ndarray) -> list[Any]:
        return array.tolist() if nested else array.reshape(-1).tolist()

    inputs = [
        {"name": n, "datatype": "FP32", "shape": list(a.shape), "data": data(a)} for n, a in feeds.items()
    ]
    return json.dumps({**fields, "inputs": inputs}).encode()


def binary_request(feeds: dict[str, np.ndarray], **fields: Any) -> tuple[bytes, dict[str, str]]:
    inputs = [
        {"name": n, "datatype": "FP32", "shape": list(a.shape), "parameters": {"binary_data_size": a.nbytes}}
        for n, a in feeds.items()
    ]
    header = json.dumps({**fields, "inputs": inputs}).encode()
    body = header + b"".join(a.tobytes() for a in feeds.values())
    return body, {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }


def json_outputs(response: Response) -> dict[str, np.ndarray]:
    assert response.status == 200, response.body[:500]
    return {
        o["name"]: np.array(o["data"], dtype=th.triton_to_np_dtype(o["datatype"])).reshape(o["shape"])
        for o in response.json()["outputs"]
    }


def assert_serving(raw: Raw, path: str = "/v2/models/simple/infer") -> None:
    """The server still answers a good request, on this connection."""
    feeds = simple_inputs(2, seed=60)
    outputs = json_outputs(raw("POST", path, json_request(feeds)))
    for name, want in ort_reference(SIMPLE, feeds).items():
        assert_same(outputs[name], want, name)


def test_server_metadata_and_health(raw) -> None:
    for path in ("/v2", "/v2/"):
        response = raw("GET", path)
        assert response.status == 200
        metadata = response.json()
        assert metadata["name"] == "hotwire" and "model_configuration" in metadata["extensions"]
    for path in (
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/simple/ready",
        "/v2/models/simple/versions/1/ready",
    ):
        response = raw("GET", path)
        assert (response.status, response.body) == (200, b""), path
    for path in ("/v2/models/no_such_model/ready", "/v2/models/simple/versions/2/ready"):
        assert raw("GET", path).status == 400, path
    assert raw("GET", "/v2/models/simple").json()["name"] == "simple"
    assert raw("GET", "/v2/models/simple/config").json()["max_batch_size"] == 8
    assert [s["name"] for s in raw("GET", "/v2/models/simple/stats").json()["model_stats"]] == ["simple"]
    assert len(raw("GET", "/v2/models/stats").json()["model_stats"]) == 4


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/v1/models/simple",
        "/v2/nope",
        "/v2/health",
        "/v2/health/live/more",
        "/v2/models/simple/nope",
        "/v2/models/simple/versions/1/nope",
        "/v2/models/simple/versions",
        "/v2/repository/nope",
    ],
)
def test_unknown_path_is_404_with_a_json_error(raw, path: str) -> None:
    method = "POST" if path.startswith("/v2/repository") else "GET"
    response = raw(method, path)
    assert response.status == 404
    assert path in response.error()
    assert_serving(raw)


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("POST", "/v2/health/live", "GET"),
        ("PUT", "/v2", "GET"),
        ("DELETE", "/v2/models/simple", "GET"),
        ("GET", "/v2/models/simple/infer", "POST"),
        ("GET", "/v2/repository/index", "POST"),
        ("POST", "/v2/models/simple/config", "GET"),
    ],
)
def test_wrong_method_is_405(raw, method: str, path: str, allowed: str) -> None:
    response = raw(method, path, b"{}" if method != "GET" else None)
    assert response.status == 405
    message = response.error()
    assert method in message and allowed in message
    assert_serving(raw)


_HEADER = json.dumps(
    {
        "inputs": [
            {"name": n, "datatype": "FP32", "shape": [1, 16], "parameters": {"binary_data_size": 64}}
            for n in ("INPUT0", "INPUT1")
        ]
    }
).encode()
_LENGTH = "Inference-Header-Content-Length"
_ONE = [{"name": "INPUT1", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16}]


def _infer_body(first: dict[str, Any], **fields: Any) -> bytes:
    return json.dumps({**fields, "inputs": [first, *_ONE]}).encode()


def _input0(**fields: Any) -> dict[str, Any]:
    return {"name": "INPUT0", "datatype": "FP32", "shape": [1, 16], "data": [0.0] * 16, **fields}


BAD_BODIES = {
    "not-json": (b"{not json", {}, ["not valid JSON"]),
    "not-utf8": (b'{"inputs": "\xff"}', {}, ["not valid JSON"]),
    "empty": (b"", {}, ["not valid JSON"]),
    "not-an-object": (b"[1, 2]", {}, ["JSON object"]),
    "no-inputs": (b'{"outputs": []}', {}, ["'inputs'"]),
    "id-not-a-string": (_infer_body(_input0(), id=7), {}, ["'id'"]),
    "unknown-datatype": (_infer_body(_input0(datatype="FP99")), {}, ["INPUT0", "FP99"]),
    "bad-shape": (_infer_body(_input0(shape=[1, -16])), {}, ["INPUT0", "'shape'"]),
    "too-few-elements": (_infer_body(_input0(data=[0.0] * 15)), {}, ["INPUT0", "15 elements"]),
    "strings-for-fp32": (_infer_body(_input0(data=["a"] * 16)), {}, ["INPUT0", "numbers"]),
    "no-data": (_infer_body({k: v for k, v in _input0().items() if k != "data"}), {}, ["INPUT0", "'data'"]),
    "binary-output-not-bool": (
        _infer_body(_input0(), parameters={"binary_data_output": 1}),
        {},
        ["binary_data_output"],
    ),
    "header-length-past-body": (
        _HEADER + b"\0" * 128,
        {_LENGTH: str(len(_HEADER) + 129)},
        ["Inference-Header-Content-Length", str(len(_HEADER) + 129)],
    ),
    "header-length-not-a-number": (
        _HEADER + b"\0" * 128,
        {_LENGTH: "12x"},
        ["Inference-Header-Content-Length", "12x"],
    ),
    "header-length-cuts-the-json": (_HEADER + b"\0" * 128, {_LENGTH: "10"}, ["not valid JSON"]),
    "binary-size-past-body": (
        _HEADER + b"\0" * 100,
        {_LENGTH: str(len(_HEADER))},
        ["INPUT1", "binary_data_size 64", "runs past"],
    ),
    "binary-without-header-length": (_HEADER + b"\0" * 128, {}, ["not valid JSON"]),
    "bytes-after-binary-inputs": (_HEADER + b"\0" * 130, {_LENGTH: str(len(_HEADER))}, ["2 bytes"]),
    "binary-size-wrong-for-shape": (
        _HEADER.replace(b"64", b"60", 1) + b"\0" * 124,
        {_LENGTH: str(len(_HEADER))},
        ["INPUT0", "60 bytes"],
    ),
    "data-and-binary": (_infer_body(_input0(parameters={"binary_data_size": 0})), {}, ["INPUT0", "both"]),
    # JSON's types are wider than the protocol's: each answered 400, never a 500 with a traceback
    "datatype-not-a-string": (_infer_body(_input0(datatype=[1])), {}, ["INPUT0", "unknown datatype"]),
    "nested-too-deeply": (b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", {}, ["nested too deeply"]),
    "integer-too-large-for-fp32": (
        _infer_body(_input0(data=[10**400] + [0.0] * 15)),
        {},
        ["INPUT0", "range"],
    ),
    "timeout-too-large": (_infer_body(_input0(), parameters={"timeout": 10**400}), {}, ["'timeout'"]),
    "priority-negative": (_infer_body(_input0(), parameters={"priority": -1}), {}, ["'priority'"]),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
def test_malformed_infer_body_is_400_naming_the_problem(raw, case: str) -> None:
    body, headers, expected = BAD_BODIES[case]
    response = raw("POST", "/v2/models/simple/infer", body, headers)
    assert response.status == 400, response.body
    message = response.error()
    assert all(part in message for part in expected), message
    assert_serving(raw)


def test_malformed_repository_body_is_400(raw) -> None:
    for body, expected in ((b"{oops", "not valid JSON"), (b'{"ready": "yes"}', "'ready'")):
        response = raw("POST", "/v2/repository/index", body)
        assert response.status == 400
        assert expected in response.error()
    # outside explicit mode a load is refused before its parameters are looked at
    assert raw("POST", "/v2/repository/models/simple/load", b'{"parameters": 3}').status == 400
    assert_serving(raw)


def test_compressed_bodies(raw) -> None:
    feeds = simple_inputs(1, seed=66)
    body = json_request(feeds)
    response = raw("POST", "/v2/models/simple/infer", gzip.compress(body), {"Content-Encoding": "gzip"})
    outputs = json_outputs(response)
    assert_same(outputs["OUTPUT0"], ort_reference(SIMPLE, feeds)["OUTPUT0"], "OUTPUT0")
    response = raw("POST", "/v2/models/simple/infer", body, {"Content-Encoding": "br"})
    assert response.status == 415 and "'br'" in response.error()
    response = raw("POST", "/v2/models/simple/infer", body, {"Content-Encoding": "gzip"})
    assert response.status == 400 and "gzip" in response.error()
    response = raw("POST", "/v2/models/simple/infer", gzip.compress(body)[:-4], {"Content-Encoding": "gzip"})
    assert response.status == 400 and "gzip" in response.error()
    bomb = zlib.compress(body + b" " * MAX_MESSAGE_BYTES)  # small on the wire, over the limit once inflated
    assert len(bomb) < MAX_MESSAGE_BYTES // 100
    response = raw("POST", "/v2/models/simple/infer", bomb, {"Content-Encoding": "deflate"})
    assert response.status == 413 and "decompressed" in response.error()
    assert_serving(raw)


def test_nested_json_data_is_accepted(raw) -> None:
    feeds = simple_inputs(3, seed=61)
    outputs = json_outputs(raw("POST", "/v2/models/simple/infer", json_request(feeds, nested=True)))
    for name, want in ort_reference(SIMPLE, feeds).items():
        assert_same(outputs[name], want, name)


def test_binary_request_and_response_on_the_wire(raw) -> None:
    """Binary inputs after the JSON header; `binary_data_output` sends every output in binary, one output's
    own `binary_data: false` keeps it in JSON."""
    feeds = simple_inputs(2, seed=62)
    outputs = [{"name": "OUTPUT0"}, {"name": "OUTPUT1", "parameters": {"binary_data": False}}]
    body, headers = binary_request(feeds, parameters={"binary_data_output": True}, outputs=outputs)
    response = raw("POST", "/v2/models/simple/infer", body, headers)
    assert response.status == 200, response.body
    assert response.headers["Content-Type"] == "application/octet-stream"
    json_length = int(response.headers["Inference-Header-Content-Length"])
    header = json.loads(response.body[:json_length])
    assert [(o["name"], o["shape"], "data" in o) for o in header["outputs"]] == [
        ("OUTPUT0", [2, 16], False),
        ("OUTPUT1", [2, 16], True),
    ]
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 2 * 16 * 4}
    assert len(response.body) == json_length + 2 * 16 * 4
    expected = ort_reference(SIMPLE, feeds)
    binary_output = np.frombuffer(response.body[json_length:], np.float32).reshape(2, 16)
    assert_same(binary_output, expected["OUTPUT0"], "OUTPUT0")
    json_output = np.array(header["outputs"][1]["data"], np.float32).reshape(2, 16)
    assert_same(json_output, expected["OUTPUT1"], "OUTPUT1")


@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_binary_bytes_tensor_on_the_wire(raw, binary_out: bool) -> None:
    """A BYTES tensor in binary: each element a 4-byte little-endian length, then its bytes."""
    words = ["", "h\u00e9llo", "x" * 300, "\u65e5\u672c"] * 8
    content = b"".join(struct.pack("<I", len(w.encode())) + w.encode() for w in words)
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT0",
                    "datatype": "BYTES",
                    "shape": [2, 16],
                    "parameters": {"binary_data_size": len(content)},
                }
            ],
            "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": binary_out}}],
        }
    ).encode()
    response = raw(
        "POST",
        "/v2/models/bytes_identity/infer",
        header + content,
        {"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status == 200, response.body
    if binary_out:
        json_length = int(response.headers["Inference-Header-Content-Length"])
        (output,) = json.loads(response.body[:json_length])["outputs"]
        assert output["parameters"] == {"binary_data_size": len(content)}
        assert response.body[json_length:] == content
    else:
        assert "Inference-Header-Content-Length" not in response.headers
        (output,) = response.json()["outputs"]
        assert output["data"] == words
    assert (output["name"], output["datatype"], output["shape"]) == ("OUTPUT0", "BYTES", [2, 16])


def test_request_id_is_echoed(raw) -> None:
    feeds = simple_inputs(1, seed=63)
    assert raw("POST", "/v2/models/simple/infer", json_request(feeds, id="my-id ü")).json()["id"] == "my-id ü"
    body, headers = binary_request(feeds, id="binary-id", parameters={"binary_data_output": True})
    response = raw("POST", "/v2/models/simple/infer", body, headers)
    json_length = int(response.headers["Inference-Header-Content-Length"])
    assert json.loads(response.body[:json_length])["id"] == "binary-id"
    assert "id" not in raw("POST", "/v2/models/simple/infer", json_request(feeds)).json()
    # an error's body is Triton's {"error": ...} alone, naming what failed
    bad = json_request({"INPUT0": feeds["INPUT0"]}, id="failing")
    response = raw("POST", "/v2/models/simple/infer", bad)
    assert response.status == 400 and "INPUT1" in response.error()


def test_percent_encoded_model_names(raw) -> None:
    quoted = quote(ODD_NAME)
    assert "%20" in quoted and "%C3%A9" in quoted
    metadata = raw("GET", f"/v2/models/{quoted}").json()
    assert metadata["name"] == ODD_NAME
    assert raw("GET", f"/v2/models/{quoted}/versions/1/ready").status == 200
    assert raw("GET", f"/v2/models/{quoted}/config").json()["name"] == ODD_NAME
    assert_serving(raw, f"/v2/models/{quoted}/versions/1/infer")
    assert_serving(raw, "/v2/models/%73imple/infer")  # any character may be encoded
    # an encoded '/' is part of the name, not a path separator
    response = raw("GET", "/v2/models/simple%2Fversions%2F1")
    assert response.status == 404
    assert "simple/versions/1" in response.error()


def test_body_over_max_message_bytes_is_413_and_the_server_keeps_serving(raw, server: ServerThread) -> None:
    feeds = simple_inputs(1, seed=64)
    body = json_request(feeds)
    exactly = body + b" " * (MAX_MESSAGE_BYTES - len(body))  # JSON allows trailing whitespace: at the limit
    json_outputs(raw("POST", "/v2/models/simple/infer", exactly))
    response = raw("POST", "/v2/models/simple/infer", exactly + b" ")
    assert response.status == 413
    assert str(MAX_MESSAGE_BYTES) in response.error() and "--max-message-bytes" in response.error()
    assert_serving(raw)

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused once the body read so far is too long
        yield body
        for _ in range(MAX_MESSAGE_BYTES // 65536 + 1):
            yield b" " * 65536

    response = raw("POST", "/v2/models/simple/infer", chunks())  # http.client sends an iterable chunked
    assert response.status == 413
    other = Raw(server)
    try:
        assert_serving(other)
    finally:
        other.close()


def test_keep_alive_requests_are_not_held_back_by_nagle(server: ServerThread) -> None:
    """A request sent in one write is answered in well under the ~40 ms a delayed ACK takes: the server's
    response (headers and body in separate writes) must not wait on Nagle's algorithm."""
    body = json_request(simple_inputs(1, seed=65))
    request = (
        b"POST /v2/models/simple/infer HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body
    host, port = server.http_address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        elapsed = []
        for _ in range(9):
            start = time.perf_counter()
            sock.sendall(request)
            status = reader.readline()
            length = 0
            while (line := reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            reader.read(length)
            elapsed.append(time.perf_counter() - start)
            assert status.startswith(b"HTTP/1.1 200"), status
    assert statistics.median(elapsed) < 0.02, [f"{e * 1e3:.1f} ms" for e in elapsed]


# ------------------------------------------------------------------------------------------------------------
# hotwire serve: the HTTP port


def test_two_workers_serve_http_on_one_port(serve, tmp_path: Path) -> None:
    """--workers 2 with --http-port 0: the supervisor picks one free port for both; each connection is
    answered by either worker (the request log line, tagged with its worker, says which)."""
    write_model(tmp_path, "simple", SIMPLE, config=SIMPLE_CONFIG)
    process = serve(
        "--workers",
        "2",
        "--model-repository",
        str(tmp_path),
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        "--metrics-port",
        "-1",
        "--host",
        "127.0.0.1",
        "--request-log-rate",
        "1",
    )
    process.wait_listening(timeout=120)
    port = process.http_port
    assert port is not None and port != process.port
    feeds = simple_inputs(1, seed=70)
    expected = ort_reference(SIMPLE, feeds)
    count = 24
    for i in range(count):  # the kernel spreads connections, not requests, across the workers
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT_S)
        try:
            connection.request("POST", "/v2/models/simple/infer", json_request(feeds, id=f"w{i}"))
            response = Response(connection.getresponse())
        finally:
            connection.close()
        outputs = json_outputs(response)
        assert response.json()["id"] == f"w{i}"
        for name, want in expected.items():
            assert_same(outputs[name], want, name)
    for i in range(count):
        process.wait_for(f"id='w{i}'")
    logged = re.findall(r"\[worker (\d)\].* id='(w\d+)'", process.log)
    by_id = {request_id: worker for worker, request_id in logged}
    assert sorted(by_id) == sorted(f"w{i}" for i in range(count))
    assert set(by_id.values()) == {"0", "1"}, by_id  # 2**-23 odds that one worker got every connection
    assert process.stop() == 0


def test_http_port_minus_one_turns_http_off(serve, tmp_path: Path) -> None:
    write_model(tmp_path, "simple", SIMPLE, config=SIMPLE_CONFIG)
    process = serve(
        "--model-repository",
        str(tmp_path),
        "--grpc-port",
        "0",
        "--http-port",
        "-1",
        "--metrics-port",
        "-1",
        "--host",
        "127.0.0.1",
    )
    port = process.wait_listening(timeout=120)
    assert process.http_port is None
    assert "HTTP on" not in process.log
    grpc = tg.InferenceServerClient(f"127.0.0.1:{port}")
    try:
        assert grpc.is_model_ready("simple")
    finally:
        grpc.close()
    assert process.stop() == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_http_port_in_use_is_a_clear_error(serve, tmp_path: Path, workers: str) -> None:
    with socket.socket() as holder:  # an empty repository: the server fails at the port, not after loading
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        process = serve(
            "--workers",
            workers,
            "--model-repository",
            str(tmp_path),
            "--grpc-port",
            "0",
            "--http-port",
            str(port),
            "--metrics-port",
            "-1",
            "--host",
            "127.0.0.1",
        )
        assert process.proc.wait(120) == 1
    process.close()
    line = next((line for line in process.lines if str(port) in line), None)
    assert line is not None, process.log
    assert "HTTP" in line and "in use" in line, line


def test_the_repository_api_refuses_web_pages(raw) -> None:
    """A browser adds Origin to a cross-origin POST, and a text/plain one needs no preflight: without the
    check any web page could roll back or load models through a server on localhost."""
    for path in ("/v2/repository/index", "/v2/repository/models/simple/load"):
        response = raw(
            "POST",
            path,
            b'{"parameters": {"hotwire.rollback": ""}}',
            {"Origin": "https://example.com", "Content-Type": "text/plain"},
        )
        assert response.status == 403, response.body
        assert "Origin" in response.error()
    assert raw("POST", "/v2/repository/index", b"{}").status == 200  # without Origin, as clients send it
    assert_serving(raw)


def test_an_unknown_action_is_404_whatever_the_method(raw) -> None:
    for method, path in (("POST", "/v2/models/simple/frobnicate"), ("GET", "/v2/repository/elsewhere")):
        response = raw(method, path)
        assert response.status == 404, (method, path, response.body)
    assert_serving(raw)


def test_a_client_gone_mid_body_is_not_counted_as_a_failed_request(server: ServerThread, raw) -> None:
    def failures() -> int:
        stats = raw("GET", "/v2/models/simple/stats").json()["model_stats"][0]
        return int(stats["inference_stats"]["fail"]["count"])

    before = failures()
    host, port = server.http_address.rsplit(":", 1)
    body = json_request(simple_inputs(1))
    with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as gone:
        head = (
            f"POST /v2/models/simple/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            "Content-Type: application/json\r\n\r\n"
        )
        gone.sendall(head.encode() + body[: len(body) // 2])  # half the body, then the client is gone
    assert_serving(
        raw
    )  # the server answers the next request, and counted nothing for the one that never came
    assert failures() == before
