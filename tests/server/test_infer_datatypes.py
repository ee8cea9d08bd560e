"""Every datatype through the real server: raw and typed contents in, raw_output_contents out, compared with
ORT.

One module-scoped server serves every model these tests use; each expected result comes from running the same
ONNX model in-process with onnxruntime.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import onnx
import onnxruntime as ort
import pytest

from hotwire.proto import grpc_service_pb2 as pb
from hotwire.proto import grpc_service_pb2_grpc
from onnx_models import ONNX_TYPES, add_sub, identity_all_types, write_model
from server_harness import ServerThread

DATATYPES = list(ONNX_TYPES)
TYPED = [d for d in DATATYPES if d != "FP16"]  # FP16 has no typed contents field: raw only

# The protocol's own tables (KServe V2 / Triton), written out here rather than taken from the server's.
NUMPY: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
ROW = 8  # elements per batch row of the identity models
MAX_MESSAGE = 64 * 1024 * 1024
SIMPLE_OFFSETS = {1: 10.0, 2: 20.0}
SIMPLE_CONFIG = """
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { all: {} }
"""


# ------------------------------------------------------------------------------------------------------------
# models


def identity_subset(names: list[str], dims: tuple = (ROW,), batched: bool = True) -> onnx.ModelProto:
    """identity_all_types restricted to the datatypes in `names` (in_D -> Identity -> out_D)."""
    model = identity_all_types(dims=dims, batched=batched)
    graph = model.graph
    keep_in = {f"in_{n}" for n in names}
    keep_out = {f"out_{n}" for n in names}
    nodes = [n for n in graph.node if n.input[0] in keep_in]
    inputs = [t for t in graph.input if t.name in keep_in]
    outputs = [t for t in graph.output if t.name in keep_out]
    del graph.node[:], graph.input[:], graph.output[:]
    graph.node.extend(nodes)
    graph.input.extend(inputs)
    graph.output.extend(outputs)
    onnx.checker.check_model(model)
    return model


MODELS: dict[str, onnx.ModelProto] = {
    "identity": identity_all_types(dims=(ROW,)),
    "identity_typed": identity_subset(TYPED),
    "identity_dyn": identity_all_types(dims=("n",)),
    "identity_nobatch": identity_all_types(dims=(2, 4), batched=False),
    "big_fp32": identity_subset(["FP32"], dims=("n",)),
    **{f"id_{d}": identity_subset([d]) for d in DATATYPES},
}
SIMPLE_VERSIONS = {v: add_sub(offset=offset) for v, offset in SIMPLE_OFFSETS.items()}

_SESSIONS: dict[int, ort.InferenceSession] = {}


def ort_reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run `model` in-process; BYTES inputs go in as str (what ORT takes), outputs come back as utf-8
    bytes."""
    session = _SESSIONS.get(id(model))
    if session is None:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        _SESSIONS[id(model)] = session
    ort_feeds = {}
    for name, array in feeds.items():
        if array.dtype == object:
            array = _object_array([v.decode("utf-8") for v in array.reshape(-1)], array.shape)
        ort_feeds[name] = array
    names = [o.name for o in session.get_outputs()]
    results = {}
    for name, array in zip(names, session.run(names, ort_feeds)):
        if array.dtype == object or array.dtype.kind in "US":
            array = _object_array([v.encode("utf-8") for v in array.reshape(-1)], array.shape)
        results[name] = array
    return results


# ------------------------------------------------------------------------------------------------------------
# values


def _object_array(values: list, shape: tuple[int, ...]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array.reshape(shape)


BYTES_SPREAD = [
    b"",
    b"a",
    "héllo wörld".encode(),
    "日本語のテキスト".encode(),
    "🚀 emoji 🔥".encode(),
    ("long " * 4000).encode(),  # 20 kB element
    b"embedded\x00nul",
    b" \t\n\r ",
    "Ω≈ç√∫".encode(),
    b"0",
    b"\x7f",
    "\u0000\uffff".encode(),
]


def spread(datatype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A realistic spread of values of `datatype`, extremes first, then random ones."""
    count = int(np.prod(shape))
    rng = np.random.default_rng(seed)
    dtype = NUMPY[datatype]
    if datatype == "BOOL":
        base = [True, False]
        extra = list(rng.integers(0, 2, size=count).astype(bool))
    elif datatype == "BYTES":
        base = list(BYTES_SPREAD)
        extra = [
            bytes(rng.integers(32, 127, size=int(rng.integers(0, 20))).astype(np.uint8)) for _ in range(count)
        ]
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        base = [info.min, info.max, 0, 1, info.min + 1, info.max - 1] + ([-1] if dtype.kind == "i" else [])
        extra = list(rng.integers(info.min, info.max, size=count, dtype=dtype, endpoint=True))
    else:
        info = np.finfo(dtype)
        base = [
            np.nan,
            np.inf,
            -np.inf,
            -0.0,
            0.0,
            info.smallest_subnormal,
            -info.smallest_subnormal,
            info.max,
            info.min,
            info.smallest_normal,
            info.eps,
            1 / 3,
        ]
        extra = list(rng.standard_normal(count) * 1000)
    values = (base + extra)[:count]
    if datatype == "BYTES":
        return _object_array(values, shape)
    return np.array(values, dtype=dtype).reshape(shape)


# ------------------------------------------------------------------------------------------------------------
# wire helpers


def raw_of(datatype: str, array: np.ndarray) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in array.reshape(-1))
    return np.ascontiguousarray(array, dtype=NUMPY[datatype]).tobytes()


def parse_bytes(raw: bytes) -> list[bytes]:
    elements, pos = [], 0
    while pos < len(raw):
        (length,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        elements.append(raw[pos : pos + length])
        pos += length
    assert pos == len(raw), "BYTES raw output: element runs past the end"
    return elements


def make_request(
    model: str,
    inputs: dict[str, tuple[str, np.ndarray]],
    *,
    typed: bool = False,
    outputs: list[str] | None = None,
    request_id: str = "",
    version: str = "",
) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model, model_version=version, id=request_id)
    for name, (datatype, array) in inputs.items():
        tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        if typed:
            tensor.contents.SetInParent()
            getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(array.reshape(-1).tolist())
        else:
            request.raw_input_contents.append(raw_of(datatype, array))
    for name in outputs or []:
        request.outputs.add(name=name)
    return request


def decode(response: pb.ModelInferResponse) -> dict[str, np.ndarray]:
    """The response's outputs by name, in order; checks there is exactly one raw entry per output."""
    assert len(response.raw_output_contents) == len(response.outputs)
    result: dict[str, np.ndarray] = {}
    for tensor, raw in zip(response.outputs, response.raw_output_contents):
        assert not tensor.HasField("contents"), f"{tensor.name}: both contents and raw_output_contents"
        shape = tuple(tensor.shape)
        if tensor.datatype == "BYTES":
            array = _object_array(parse_bytes(raw), shape)
        else:
            array = np.frombuffer(raw, dtype=NUMPY[tensor.datatype]).reshape(shape)
        result[tensor.name] = array
    return result


def assert_same(actual: np.ndarray, expected: np.ndarray, what: str) -> None:
    """Equal shape, dtype and values; floats bit for bit (so -0.0 and NaN count)."""
    assert actual.shape == expected.shape, what
    assert actual.dtype == expected.dtype, what
    if actual.dtype == object:
        assert actual.tolist() == expected.tolist(), what
        return
    np.testing.assert_array_equal(actual, expected, err_msg=what)
    if actual.dtype.kind == "f":
        bits = np.dtype(f"<u{actual.dtype.itemsize}")
        np.testing.assert_array_equal(actual.view(bits), expected.view(bits), err_msg=f"{what} (bits)")


def check_outputs(
    response: pb.ModelInferResponse, expected: dict[str, np.ndarray], datatypes: dict[str, str]
) -> None:
    """Response outputs are exactly `expected`'s names, in that order, with the right datatypes and values."""
    assert [t.name for t in response.outputs] == list(expected)
    got = decode(response)
    for tensor in response.outputs:
        assert tensor.datatype == datatypes[tensor.name], tensor.name
        assert list(tensor.shape) == list(expected[tensor.name].shape), tensor.name
        assert_same(got[tensor.name], expected[tensor.name], tensor.name)


# ------------------------------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    root: Path = tmp_path_factory.mktemp("datatypes_repo")
    for name, model in MODELS.items():
        write_model(root, name, model)
    for version, model in SIMPLE_VERSIONS.items():
        write_model(root, "simple", model, config=SIMPLE_CONFIG, version=version)
    thread = ServerThread(root).start()
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def stub(server: ServerThread) -> Iterator[grpc_service_pb2_grpc.GRPCInferenceServiceStub]:
    options = [
        ("grpc.max_send_message_length", MAX_MESSAGE),
        ("grpc.max_receive_message_length", MAX_MESSAGE),
    ]
    channel = grpc.insecure_channel(server.address, options=options)
    yield grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def expect_error(call, code: grpc.StatusCode, *words: str) -> str:
    with pytest.raises(grpc.RpcError) as info:
        call()
    assert info.value.code() == code, info.value.details()
    details = info.value.details()
    for word in words:
        assert word in details, details
    return details


# ------------------------------------------------------------------------------------------------------------
# every datatype


@pytest.mark.parametrize("datatype", DATATYPES)
def test_raw_roundtrip_every_datatype(stub, datatype: str) -> None:
    model = f"id_{datatype}"
    array = spread(datatype, (2, ROW), seed=1)
    response = stub.ModelInfer(
        make_request(model, {f"in_{datatype}": (datatype, array)}, request_id=f"raw-{datatype}")
    )
    assert response.model_name == model
    assert response.model_version == "1"
    assert response.id == f"raw-{datatype}"
    expected = ort_reference(MODELS[model], {f"in_{datatype}": array})
    check_outputs(response, expected, {f"out_{datatype}": datatype})
    assert_same(decode(response)[f"out_{datatype}"], array, "identity")


@pytest.mark.parametrize("datatype", TYPED)
def test_typed_contents_roundtrip_every_datatype(stub, datatype: str) -> None:
    model = f"id_{datatype}"
    array = spread(datatype, (2, ROW), seed=2)
    request = make_request(model, {f"in_{datatype}": (datatype, array)}, typed=True)
    assert not request.raw_input_contents
    response = stub.ModelInfer(request)
    expected = ort_reference(MODELS[model], {f"in_{datatype}": array})
    check_outputs(response, expected, {f"out_{datatype}": datatype})
    assert_same(decode(response)[f"out_{datatype}"], array, "identity")


def test_fp16_has_no_typed_contents(stub) -> None:
    request = pb.ModelInferRequest(model_name="id_FP16")
    tensor = request.inputs.add(name="in_FP16", datatype="FP16", shape=[1, ROW])
    tensor.contents.fp32_contents.extend([1.0] * ROW)
    expect_error(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "in_FP16", "raw")


# narrower than their contents field
@pytest.mark.parametrize("datatype", ["UINT8", "UINT16", "INT8", "INT16"])
def test_typed_contents_out_of_range_is_rejected(stub, datatype: str) -> None:
    """A typed value that does not fit the datatype (e.g. 256 as UINT8) is an error, never silently
    wrapped."""
    dtype = NUMPY[datatype]
    request = pb.ModelInferRequest(model_name=f"id_{datatype}")
    tensor = request.inputs.add(name=f"in_{datatype}", datatype=datatype, shape=[1, ROW])
    values = [0] * (ROW - 1) + [int(np.iinfo(dtype).max) + 1]
    getattr(tensor.contents, CONTENTS_FIELD[datatype]).extend(values)
    expect_error(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, f"in_{datatype}")


def test_all_datatypes_in_one_raw_request(stub) -> None:
    arrays = {d: spread(d, (3, ROW), seed=3) for d in DATATYPES}
    request = make_request("identity", {f"in_{d}": (d, a) for d, a in arrays.items()}, request_id="all-raw")
    response = stub.ModelInfer(request)
    assert response.id == "all-raw"
    assert response.model_version == "1"
    assert len(response.raw_output_contents) == len(DATATYPES)
    expected = ort_reference(MODELS["identity"], {f"in_{d}": a for d, a in arrays.items()})
    assert list(expected) == [f"out_{d}" for d in DATATYPES]  # the model's output order
    check_outputs(response, expected, {f"out_{d}": d for d in DATATYPES})


def test_all_typed_datatypes_in_one_request(stub) -> None:
    arrays = {d: spread(d, (2, ROW), seed=4) for d in TYPED}
    response = stub.ModelInfer(
        make_request("identity_typed", {f"in_{d}": (d, a) for d, a in arrays.items()}, typed=True)
    )
    expected = ort_reference(MODELS["identity_typed"], {f"in_{d}": a for d, a in arrays.items()})
    check_outputs(response, expected, {f"out_{d}": d for d in TYPED})


def test_typed_and_raw_are_not_mixed(stub) -> None:
    """All-typed or all-raw per request: one typed input next to raw ones is rejected, naming the input."""
    arrays = {d: spread(d, (1, ROW)) for d in TYPED}
    request = make_request("identity_typed", {f"in_{d}": (d, a) for d, a in arrays.items()})
    request.inputs[0].contents.bool_contents.extend([True] * ROW)
    expect_error(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "in_BOOL")


def test_invalid_utf8_bytes_is_invalid_argument(stub) -> None:
    array = _object_array([b"ok", b"\xff\xfe not utf-8"] + [b""] * (ROW - 2), (1, ROW))
    for typed in (False, True):
        request = make_request("id_BYTES", {"in_BYTES": ("BYTES", array)}, typed=typed)
        expect_error(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "in_BYTES", "UTF-8")


# ------------------------------------------------------------------------------------------------------------
# requested outputs, id, versions


def test_requested_outputs_subset_in_requested_order(stub) -> None:
    arrays = {d: spread(d, (2, ROW), seed=5) for d in DATATYPES}
    request = make_request(
        "identity",
        {f"in_{d}": (d, a) for d, a in arrays.items()},
        outputs=["out_INT32", "out_FP32"],
        request_id="subset-7",
    )
    response = stub.ModelInfer(request)
    assert response.id == "subset-7"
    assert [t.name for t in response.outputs] == ["out_INT32", "out_FP32"]
    assert len(response.raw_output_contents) == 2
    expected = ort_reference(MODELS["identity"], {f"in_{d}": a for d, a in arrays.items()})
    check_outputs(
        response,
        {"out_INT32": expected["out_INT32"], "out_FP32": expected["out_FP32"]},
        {"out_INT32": "INT32", "out_FP32": "FP32"},
    )


def test_unknown_requested_output_is_rejected(stub) -> None:
    array = spread("INT32", (1, ROW))
    request = make_request("id_INT32", {"in_INT32": ("INT32", array)}, outputs=["out_NOPE"])
    expect_error(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "out_NOPE")


def _simple_inputs(rows: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal((rows, 16)).astype(np.float32) for name in ("INPUT0", "INPUT1")}


def _simple_request(feeds: dict[str, np.ndarray], **kwargs) -> pb.ModelInferRequest:
    return make_request("simple", {n: ("FP32", a) for n, a in feeds.items()}, **kwargs)


@pytest.mark.parametrize(("requested", "served"), [("1", 1), ("2", 2), ("", 2)])
def test_version_pinning(stub, requested: str, served: int) -> None:
    feeds = _simple_inputs(3, seed=served)
    response = stub.ModelInfer(_simple_request(feeds, version=requested, request_id=f"v{requested}"))
    assert response.model_name == "simple"
    assert response.model_version == str(served)
    assert response.id == f"v{requested}"
    expected = ort_reference(SIMPLE_VERSIONS[served], feeds)
    check_outputs(response, expected, {"OUTPUT0": "FP32", "OUTPUT1": "FP32"})
    np.testing.assert_allclose(
        decode(response)["OUTPUT0"],
        feeds["INPUT0"] + feeds["INPUT1"] + SIMPLE_OFFSETS[served],
        rtol=1e-6,
        atol=1e-5,
    )


def test_unknown_version_is_not_found(stub) -> None:
    expect_error(
        lambda: stub.ModelInfer(_simple_request(_simple_inputs(1, 0), version="3")),
        grpc.StatusCode.NOT_FOUND,
        "simple",
        "3",
    )


def test_both_versions_are_ready(stub) -> None:
    for version in ("1", "2", ""):
        assert stub.ModelReady(pb.ModelReadyRequest(name="simple", version=version)).ready
    assert not stub.ModelReady(pb.ModelReadyRequest(name="simple", version="3")).ready
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="simple"))
    assert list(metadata.versions) == ["1", "2"]


# ------------------------------------------------------------------------------------------------------------
# batching, shapes, sizes


@pytest.mark.parametrize("rows", [1, 5, 32])
def test_batch_of_rows_all_datatypes(stub, rows: int) -> None:
    arrays = {d: spread(d, (rows, ROW), seed=rows) for d in DATATYPES}
    response = stub.ModelInfer(make_request("identity", {f"in_{d}": (d, a) for d, a in arrays.items()}))
    expected = ort_reference(MODELS["identity"], {f"in_{d}": a for d, a in arrays.items()})
    check_outputs(response, expected, {f"out_{d}": d for d in DATATYPES})


def test_batch_over_max_batch_size_is_rejected(stub) -> None:
    expect_error(
        lambda: stub.ModelInfer(_simple_request(_simple_inputs(9, 0))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INPUT0",
        "8",
    )


def test_concurrent_requests_get_their_own_rows(stub) -> None:
    """Concurrent requests may be batched together by the server; each must get back exactly its own rows."""
    cases = [_simple_inputs(1 + i % 3, seed=100 + i) for i in range(24)]
    with ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(stub.ModelInfer, _simple_request(f, request_id=f"c{i}")) for i, f in enumerate(cases)
        ]
        responses = [f.result(timeout=30) for f in futures]
    for i, (feeds, response) in enumerate(zip(cases, responses)):
        assert response.id == f"c{i}"
        check_outputs(
            response, ort_reference(SIMPLE_VERSIONS[2], feeds), {"OUTPUT0": "FP32", "OUTPUT1": "FP32"}
        )


def test_model_without_batch_dimension(stub) -> None:
    config = stub.ModelConfig(pb.ModelConfigRequest(name="identity_nobatch")).config
    assert config.max_batch_size == 0
    metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name="identity_nobatch"))
    assert [list(t.shape) for t in metadata.inputs] == [[2, 4]] * len(DATATYPES)
    arrays = {d: spread(d, (2, 4), seed=6) for d in DATATYPES}
    response = stub.ModelInfer(
        make_request("identity_nobatch", {f"in_{d}": (d, a) for d, a in arrays.items()})
    )
    expected = ort_reference(MODELS["identity_nobatch"], {f"in_{d}": a for d, a in arrays.items()})
    check_outputs(response, expected, {f"out_{d}": d for d in DATATYPES})
    # A batch dimension in front is a shape mismatch, not a batch.
    batched = {d: a[np.newaxis] for d, a in arrays.items()}
    request = make_request("identity_nobatch", {f"in_{d}": (d, a) for d, a in batched.items()})
    expect_error(lambda: stub.ModelInfer(request), grpc.StatusCode.INVALID_ARGUMENT, "in_BOOL", "shape")


def test_zero_size_dimension(stub) -> None:
    """A dynamic dimension of size 0 is a valid, empty tensor for every datatype (ORT accepts it)."""
    arrays = {d: spread(d, (2, 0)) for d in DATATYPES}
    response = stub.ModelInfer(make_request("identity_dyn", {f"in_{d}": (d, a) for d, a in arrays.items()}))
    assert all(raw == b"" for raw in response.raw_output_contents)
    expected = ort_reference(MODELS["identity_dyn"], {f"in_{d}": a for d, a in arrays.items()})
    check_outputs(response, expected, {f"out_{d}": d for d in DATATYPES})


def test_zero_batch_size_is_rejected(stub) -> None:
    """Shape [0, 8] on a batching model: batch size 0 is outside 1..max_batch_size (as in Triton)."""
    array = spread("FP32", (0, ROW))
    expect_error(
        lambda: stub.ModelInfer(make_request("id_FP32", {"in_FP32": ("FP32", array)})),
        grpc.StatusCode.INVALID_ARGUMENT,
        "in_FP32",
        "batch size 0",
    )


def test_dynamic_dimension_per_request(stub) -> None:
    for width in (1, 7, 33):
        arrays = {d: spread(d, (2, width), seed=width) for d in DATATYPES}
        response = stub.ModelInfer(
            make_request("identity_dyn", {f"in_{d}": (d, a) for d, a in arrays.items()})
        )
        expected = ort_reference(MODELS["identity_dyn"], {f"in_{d}": a for d, a in arrays.items()})
        check_outputs(response, expected, {f"out_{d}": d for d in DATATYPES})


def test_large_fp32_input_roundtrips_exactly(stub) -> None:
    count = 1 << 20  # 4 MiB of FP32
    array = np.random.default_rng(7).standard_normal((1, count)).astype(np.float32)
    array[0, :12] = spread("FP32", (12,))
    request = make_request("big_fp32", {"in_FP32": ("FP32", array)})
    assert len(request.raw_input_contents[0]) == 4 * count
    response = stub.ModelInfer(request)
    assert [list(t.shape) for t in response.outputs] == [[1, count]]
    assert response.raw_output_contents[0] == array.tobytes()
