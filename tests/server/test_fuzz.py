"""Wire-level fuzzing of a real server (hardening issue item 6).

A `hotwire serve` subprocess on 127.0.0.1 (so its resident memory is its own) gets, from hypothesis:
ModelInfer as raw protobuf bytes (no serializer) — structurally valid requests with fuzzed fields, and random
or mutated bytes —, ModelStreamInfer streams of the same, ModelMetadata / ModelConfig / ModelReady /
ModelStatistics and the repository calls with fuzzed names and versions, and HTTP POST /v2/models/{m}/infer
bodies (JSON tensors and the binary tensor extension). Every answer must be a proper status, never INTERNAL or
UNKNOWN (HTTP: never 500) for what only a client chose; a request the generator left valid must be answered OK
with the right values; the server stays alive and its RSS stays within FUZZ_RSS_BOUND of where it was after a
warm-up.

Two runs of FUZZ_EXAMPLES examples: one with a fixed seed, one with a random seed that the test prints (set
FUZZ_SEED=<seed> to rerun it). Findings and their regression tests are at the end of the file.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import struct
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import grpc
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from hotwire.proto import grpc_service_pb2 as pb
from hotwire.proto import grpc_service_pb2_grpc as pb_grpc
from hotwire.server import datatypes
from onnx_models import SIMPLE_CONFIG, add_sub, identity_all_types, tiny_model, write_model
from server_harness import ServeProcess

FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "2000"))
FIXED_SEED = 20240611
WARM_UP_EXAMPLES = 300
FUZZ_RSS_BOUND = 20 * 1024 * 1024
CALL_TIMEOUT_S = 20.0
INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"

# What a client-originated request may be answered with. INTERNAL and UNKNOWN never: they say the server
# failed; CANCELLED never (nothing here is cancelled); DEADLINE_EXCEEDED only from the server's own queue
# timeout (the `timeout` parameter), which says so.
ALLOWED = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.DEADLINE_EXCEEDED,
    }
)
ADMIN_ALLOWED = ALLOWED | {grpc.StatusCode.UNAVAILABLE}
HTTP_ALLOWED = frozenset({200, 400, 404, 405, 413, 415, 429, 504})

# ------------------------------------------------------------------------------------------------------------
# the models: each one's inputs as (name, datatype, shape from (rows, n)) and how its outputs follow


@dataclass(frozen=True)
class Model:
    name: str
    inputs: tuple[tuple[str, str], ...]  # (name, datatype)
    batched: bool
    shape: Callable[[int, int], list[int]]  # (rows, n) -> every input's shape
    outputs: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # the expected outputs


def _simple_outputs(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    a, b = feeds["INPUT0"], feeds["INPUT1"]
    return {"OUTPUT0": a + b, "OUTPUT1": a - b}


def _identity_outputs(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"out_" + name[3:]: array for name, array in feeds.items()}


MODELS = {
    m.name: m
    for m in (
        Model(
            "simple", (("INPUT0", "FP32"), ("INPUT1", "FP32")), True, lambda r, n: [r, 16], _simple_outputs
        ),
        Model(
            "types",
            tuple((f"in_{d}", d) for d in datatypes.BY_NAME),
            True,
            lambda r, n: [r, n],
            _identity_outputs,
        ),
        Model(
            "types_fixed",
            tuple((f"in_{d}", d) for d in datatypes.BY_NAME),
            False,
            lambda r, n: [3],
            _identity_outputs,
        ),
        # config `reshape`: x [rows, 2n] reaches the model as [rows, n, 2]
        Model(
            "reshaped",
            (("x", "FP32"),),
            True,
            lambda r, n: [r, 2 * n],
            lambda f: {"y": f["x"].reshape(f["x"].shape[0], -1, 2)},
        ),
    )
}
OUTPUT_NAMES = {
    "simple": ("OUTPUT0", "OUTPUT1"),
    "types": tuple(f"out_{d}" for d in datatypes.BY_NAME),
    "types_fixed": tuple(f"out_{d}" for d in datatypes.BY_NAME),
    "reshaped": ("y",),
}
RESHAPED_CONFIG = """
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ -1 ] reshape: { shape: [ -1, 2 ] } } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ -1, 2 ] } ]
dynamic_batching { }
"""


def reshaped_model() -> onnx.ModelProto:
    """FP32 [batch, n, 2] -> Identity; served through a config `reshape` from [batch, 2n]."""
    shape: list[str | int] = ["batch", "n", 2]
    return tiny_model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )


DYNAMIC: Any = ("n",)  # a symbolic ONNX dimension (identity_all_types is typed for fixed ones)


def write_repository(root: Path) -> Path:
    write_model(root, "simple", add_sub(), SIMPLE_CONFIG)
    write_model(root, "types", identity_all_types(dims=DYNAMIC), "max_batch_size: 8\ndynamic_batching { }\n")
    write_model(root, "types_fixed", identity_all_types(batched=False), "max_batch_size: 0\n")
    write_model(root, "reshaped", reshaped_model(), RESHAPED_CONFIG)
    write_model(root, "admin", add_sub(), SIMPLE_CONFIG.replace('"simple"', '"admin"'))  # the admin calls'
    return root


# ------------------------------------------------------------------------------------------------------------
# requests: a spec (what the generator chose) rendered as protobuf bytes or as an HTTP body


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray | None  # the data; None when a mutation made it unrepresentable
    raw: bytes  # its raw (binary extension / raw_input_contents) form, possibly mutated


@dataclass
class Spec:
    model: str
    version: str
    id: str
    tensors: list[Tensor]
    outputs: list[tuple[str, dict[str, Any]]] | None  # requested outputs and their parameters
    parameters: dict[str, Any]
    mutations: list[str] = field(default_factory=list)  # empty: the request is valid and must succeed

    @property
    def valid(self) -> bool:
        return not self.mutations


_LENGTH = struct.Struct("<I")
TEXT_PIECES = ["a", "é", "€", "😀", " ", "\x00", "\n", "z" * 5, '"', "\\", "0"]


def raw_of(array: np.ndarray, datatype: str) -> bytes:
    if datatype == "BYTES":
        parts = []
        for element in array.reshape(-1):
            encoded = str(element).encode()
            parts += [_LENGTH.pack(len(encoded)), encoded]
        return b"".join(parts)
    return np.ascontiguousarray(array, dtype=datatypes.BY_NAME[datatype].numpy).tobytes()


def random_array(rng: np.random.Generator, datatype: str, shape: list[int]) -> np.ndarray:
    count = int(np.prod(shape))
    if datatype == "BYTES":
        values = ["".join(rng.choice(TEXT_PIECES, int(rng.integers(0, 4)))) for _ in range(count)]
        array = np.empty(count, dtype=object)
        array[:] = values
        return array.reshape(shape)
    if datatype == "BOOL":
        return rng.integers(0, 2, shape).astype(bool)
    dtype = datatypes.BY_NAME[datatype].numpy
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    # finite values exactly representable in every float type (JSON round-trips them too)
    return (rng.integers(-2048, 2048, shape) / 8).astype(dtype)


def small(shape: list[int]) -> bool:
    """Whether the generator can make data for this shape."""
    return len(shape) <= 8 and all(d >= 0 for d in shape) and int(np.prod(shape, dtype=object)) <= 4096


WEIRD_VERSIONS = ["01", "²", "١", "0", "2", "-1", "+1", " 1", "1.0", "1\x00", "9" * 5000, str(2**63), "x"]
WEIRD_DATATYPES = ["FP8", "BF16", "fp32", "", "STRING", "INT128", "FP32 ", "TYPE_FP32", "bytes"]
NAMES = st.one_of(
    st.sampled_from(["", "ghost", "simple/1", "../simple", "SIMPLE", "simple\x00", ".", "..", "a" * 300]),
    st.text(max_size=12),
)
WEIRD_SHAPES: st.SearchStrategy[list[int]] = st.one_of(
    st.lists(st.integers(-(2**63), 2**63 - 1), max_size=4),
    st.lists(st.sampled_from([0, 1, 2, 3, 16, 2**31, 2**32, 2**62, 2**63 - 1, -1]), max_size=5),
    st.integers(60, 70).map(lambda k: [1] * k),  # over the 64 dimensions allowed
    st.integers(60, 70).map(lambda k: [0] * k),
    st.just([]),
)
MUTATIONS = [
    "model",
    "version",
    "drop",
    "duplicate",
    "rename",
    "datatype",
    "shape",
    "data_size",
    "bytes_content",
    "outputs",
    "parameters",
    "rows",
    "reshape_all",
    "edge_values",
]


def parameter_values() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.integers(0, 2**64 - 1),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=8),
        st.binary(max_size=8),
    )


PARAMETER_KEYS = st.one_of(
    st.sampled_from(
        ["priority", "timeout", "sequence_id", "sequence_start", "binary_data_output", "binary_data_size"]
    ),
    st.text(max_size=8),
)


def mutation_lists(mutations: list[str], multiple: bool = False) -> st.SearchStrategy[list[str]]:
    """None (valid), exactly one (each one's own failure reaches as deep as it can), or a few at once."""
    single = st.sampled_from(mutations).map(lambda m: [m])
    if not multiple:
        return st.one_of(st.just([]), single)
    return st.one_of(st.just([]), single, st.lists(st.sampled_from(mutations), min_size=2, max_size=3))


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    model = MODELS[draw(st.sampled_from(sorted(MODELS)))]
    rows = draw(st.integers(1, 8)) if model.batched else 1
    n = draw(st.integers(0, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    tensors = []
    for name, datatype in model.inputs:
        shape = model.shape(rows, n)
        array = random_array(rng, datatype, shape)
        tensors.append(Tensor(name, datatype, shape, array, raw_of(array, datatype)))
    tensors = draw(st.permutations(tensors))
    outputs: list[tuple[str, dict[str, Any]]] | None = None
    if draw(st.booleans()):
        names = draw(st.lists(st.sampled_from(OUTPUT_NAMES[model.name]), unique=True, max_size=3))
        outputs = [(name, {}) for name in names] or None
    spec = Spec(model.name, draw(st.sampled_from(["", "1"])), draw(st.text(max_size=6)), tensors, outputs, {})
    for mutation in draw(mutation_lists(MUTATIONS, multiple=True)):
        mutate(draw, spec, mutation, rng)
    return spec


def mutate(draw: st.DrawFn, spec: Spec, mutation: str, rng: np.random.Generator) -> None:
    spec.mutations.append(mutation)
    tensors = spec.tensors
    index = draw(st.integers(0, max(0, len(tensors) - 1)))
    if mutation in ("bytes_content", "edge_values") and draw(st.booleans()):
        # aim at the tensor whose type the mutation is about, where the model has one
        wanted = "BYTES" if mutation == "bytes_content" else draw(st.sampled_from(list(datatypes.BY_NAME)))
        index = next((i for i, t in enumerate(tensors) if t.datatype == wanted), index)
    tensor = tensors[index] if tensors else None
    if mutation == "model":
        spec.model = draw(NAMES)
    elif mutation == "version":
        spec.version = draw(st.one_of(st.sampled_from(WEIRD_VERSIONS), st.text(max_size=4)))
    elif mutation == "drop" and tensor is not None:
        del tensors[index]
    elif mutation == "duplicate" and tensor is not None:
        tensors.append(replace(tensor))
    elif mutation == "rename" and tensor is not None:
        tensor.name = draw(st.one_of(NAMES, st.sampled_from([t.name for t in tensors])))
    elif mutation == "datatype" and tensor is not None:
        tensor.datatype = draw(st.sampled_from(WEIRD_DATATYPES + list(datatypes.BY_NAME)))
        if tensor.datatype not in datatypes.BY_NAME:
            tensor.array = None
        elif tensor.array is not None and small(tensor.shape):
            tensor.array = random_array(rng, tensor.datatype, tensor.shape)  # data of the new type
        else:
            tensor.array = None
    elif mutation == "shape" and tensor is not None:
        tensor.shape = draw(WEIRD_SHAPES)
    elif mutation == "rows":  # every tensor's first dimension, so they still agree: 0, over max_batch_size
        first = draw(st.sampled_from([0, 9, 64, 2**31, 2**62]))
        for t in tensors:
            t.shape = [first, *t.shape[1:]]
    elif mutation == "reshape_all":
        # one new shape for every tensor, with data to match: odd, empty and other unplanned extents reach the
        # model (a config `reshape` of them included)
        rank = min(len(tensors[0].shape), 3) if tensors else 1
        new_shape = [draw(st.sampled_from([0, 1, 2, 3, 5, 7, 8])) for _ in range(rank)]
        if draw(st.booleans()):
            new_shape = new_shape + [draw(st.sampled_from([0, 1, 2]))]
        for t in tensors:
            t.shape = list(new_shape)
            if t.datatype in datatypes.BY_NAME:
                t.array = random_array(rng, t.datatype, t.shape)
                t.raw = raw_of(t.array, t.datatype)
    elif mutation == "edge_values" and tensor is not None and tensor.array is not None and tensor.array.size:
        # values at and past the limits of the type, in the typed and JSON forms (raw cannot carry them)
        edge = draw(
            st.sampled_from(
                [2**63, 2**64 - 1, 2**64, -1, -(2**63) - 1, 2**31, 256, -129, 1.5, 1e300, -0.0, True, "1"]
            )
        )
        values = tensor.array.reshape(-1).tolist()
        values[draw(st.integers(0, len(values) - 1))] = edge
        array = np.empty(len(values), dtype=object)
        array[:] = values
        tensor.array = array.reshape(tensor.array.shape)
    elif mutation == "data_size" and tensor is not None:
        cut = draw(st.integers(-8, 8))
        tensor.raw = tensor.raw[:cut] if cut < 0 else tensor.raw + bytes(draw(st.binary(min_size=cut)))
        if tensor.array is not None and tensor.array.size:
            tensor.array = tensor.array.reshape(-1)[:-1]
        elif tensor.array is not None:
            tensor.array = random_array(rng, tensor.datatype, [1])
    elif mutation == "bytes_content" and tensor is not None:
        # BYTES framing broken: a length past the end, a truncated prefix, invalid UTF-8
        tensor.raw = draw(
            st.sampled_from(
                [
                    _LENGTH.pack(2**32 - 1) + b"x",
                    b"\x01\x00",
                    _LENGTH.pack(2) + b"\xff\xfe",
                    _LENGTH.pack(1) + b"\x80",
                    tensor.raw + b"\x00",
                    _LENGTH.pack(3) + "\ud800".encode("utf-8", "surrogatepass"),
                ]
            )
        )
        if tensor.datatype == "BYTES" and tensor.array is not None and tensor.array.size:
            tensor.array = tensor.array.copy()
            tensor.array.reshape(-1)[0] = draw(st.sampled_from(["\ud800", "a\udfff", "\x00\udbff\x00"]))
    elif mutation == "outputs":
        names = st.one_of(NAMES, st.sampled_from(OUTPUT_NAMES.get(spec.model, ("y",))))
        parameters = st.dictionaries(
            st.sampled_from(["classification", "shared_memory_region", "binary_data", "x"]),
            parameter_values(),
            max_size=2,
        )
        spec.outputs = draw(st.lists(st.tuples(names, parameters), max_size=4))
    elif mutation == "parameters":
        spec.parameters = draw(st.dictionaries(PARAMETER_KEYS, parameter_values(), max_size=3))


# ----- gRPC rendering


def set_parameter(target: Any, value: Any) -> None:
    """An InferParameter or a ModelRepositoryParameter set to `value`, in the field of its type where the
    message has one (a string otherwise)."""
    fields = target.DESCRIPTOR.fields_by_name
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int) and value >= 2**63 and "uint64_param" in fields:
        target.uint64_param = value
    elif isinstance(value, int) and -(2**63) <= value < 2**63:
        target.int64_param = value
    elif isinstance(value, float) and "double_param" in fields:
        target.double_param = value
    elif isinstance(value, bytes) and "bytes_param" in fields:
        target.bytes_param = value
    elif isinstance(value, bytes):
        target.string_param = value.decode("latin-1")
    else:
        target.string_param = str(value)


GRPC_MUTATIONS = ["typed_and_raw", "raw_count", "wrong_field", "out_of_range", "empty_contents"]


def typed_values(tensor: Tensor) -> tuple[str, list[Any]] | None:
    """The typed `contents` field and values of a tensor; None when its datatype has none (FP16)."""
    dtype = datatypes.BY_NAME.get(tensor.datatype)
    if dtype is None or dtype.contents_field is None or tensor.array is None:
        return None
    values = tensor.array.reshape(-1).tolist()
    if tensor.datatype == "BYTES":
        values = [str(v).encode("utf-8", "surrogatepass") for v in values]
    return dtype.contents_field, values


def grpc_request(draw: st.DrawFn, spec: Spec) -> tuple[bytes, bool]:
    """The serialized ModelInferRequest of a spec, with gRPC's own mutations; and whether it is valid."""
    request = pb.ModelInferRequest(model_name=spec.model, model_version=spec.version, id=spec.id)
    for key, value in spec.parameters.items():
        set_parameter(request.parameters[key], value)
    for name, parameters in spec.outputs or ():
        out = request.outputs.add(name=name)
        for key, value in parameters.items():
            set_parameter(out.parameters[key], value)
    typed = draw(st.booleans()) and all(typed_values(t) is not None for t in spec.tensors)
    valid = spec.valid
    extra = draw(mutation_lists(GRPC_MUTATIONS))
    valid = valid and not extra
    for i, tensor in enumerate(spec.tensors):
        entry = request.inputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        as_typed = typed != ("typed_and_raw" in extra and i == 0)
        contents = typed_values(tensor) if as_typed else None
        if contents is not None:
            field_name, values = contents
            if "wrong_field" in extra and i == 0:
                field_name = draw(st.sampled_from([f.name for f in pb.InferTensorContents.DESCRIPTOR.fields]))
                values = (
                    draw(st.lists(st.integers(0, 1), max_size=3)) if field_name != "bytes_contents" else []
                )
            if "out_of_range" in extra and i == 0 and field_name in ("int_contents", "uint_contents"):
                values = [2**31 - 1 if field_name == "int_contents" else 2**32 - 1]
            try:
                getattr(entry.contents, field_name).extend(values)
            except (TypeError, ValueError, OverflowError):  # values that do not fit the field
                pass
            entry.contents.SetInParent()
        elif not as_typed:
            request.raw_input_contents.append(tensor.raw)
        if "empty_contents" in extra and i == 0:
            entry.ClearField("contents")
    if "raw_count" in extra:
        if request.raw_input_contents and draw(st.booleans()):
            del request.raw_input_contents[-1]
        else:
            request.raw_input_contents.append(draw(st.binary(max_size=16)))
    return request.SerializeToString(), valid


@st.composite
def mutated_bytes(draw: st.DrawFn) -> bytes:
    data, _ = grpc_request(draw, draw(specs()))
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        how = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "varint"]))
        if how == "flip":
            data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
        elif how == "insert":
            data = data[:at] + draw(st.binary(min_size=1, max_size=8)) + data[at:]
        elif how == "delete":
            data = data[:at] + data[at + 1 :]
        elif how == "truncate":
            data = data[:at]
        else:  # an over-long varint
            data = data[:at] + b"\xff" * draw(st.integers(9, 12)) + data[at:]
    return data


@st.composite
def infer_messages(draw: st.DrawFn) -> tuple[bytes, Spec | None, bool]:
    """(the bytes, the spec they render when they do, whether they are valid)."""
    kind = draw(st.sampled_from(["spec", "spec", "spec", "mutated", "random"]))
    if kind == "random":
        return draw(st.binary(max_size=200)), None, False
    if kind == "mutated":
        return draw(mutated_bytes()), None, False
    spec = draw(specs())
    data, valid = grpc_request(draw, spec)
    return data, spec, valid


# ----- HTTP rendering


def json_values(array: np.ndarray, nested: bool) -> list[Any]:
    values = array.tolist()
    if not nested:
        return array.reshape(-1).tolist()
    return values if isinstance(values, list) else [values]


HTTP_MUTATIONS = [
    "json_shape",
    "json_data",
    "binary_size",
    "header_length",
    "structure",
    "not_json",
    "binary_and_data",
    "surrogates",
    "content_encoding",
]
SURROGATE = "\udc80"  # JSON can carry one ("\\udc80"); protobuf strings cannot
JSON_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([10**400, -(10**400), 1e308, float("nan"), float("inf")]),
    st.text(max_size=4),
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def http_request(draw: st.DrawFn, spec: Spec) -> tuple[str, bytes, dict[str, str], bool, bool]:
    """(path, body, headers, valid, whether binary outputs were asked for) of a spec over HTTP."""
    extra = draw(mutation_lists(HTTP_MUTATIONS))
    valid = spec.valid and not extra
    binary = draw(st.booleans())
    binary_output = draw(st.booleans())
    inputs: list[Any] = []
    payload: list[bytes] = []
    for i, tensor in enumerate(spec.tensors):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if binary or tensor.array is None:
            entry["parameters"] = {"binary_data_size": len(tensor.raw)}
            payload.append(tensor.raw)
            if "binary_and_data" in extra and i == 0:
                entry["data"] = [1]
        else:
            entry["data"] = json_values(tensor.array, draw(st.booleans()))
        if "json_shape" in extra and i == 0:
            entry["shape"] = draw(
                st.one_of(JSON_JUNK, st.lists(JSON_JUNK, max_size=3), st.just([1.5, 2]), st.just([True]))
            )
        if "json_data" in extra and i == 0:
            entry["data"] = draw(st.one_of(JSON_JUNK, st.lists(JSON_JUNK, max_size=4)))
            entry.pop("parameters", None)
            if payload and binary:
                payload.pop()
        if "binary_size" in extra and i == 0:
            entry["parameters"] = {"binary_data_size": draw(JSON_JUNK)}
        inputs.append(entry)
    header: dict[str, Any] = {"inputs": inputs}
    if spec.id:
        header["id"] = spec.id
    parameters: dict[str, Any] = {
        k: v for k, v in spec.parameters.items() if not isinstance(v, bytes) and v == v
    }  # JSON has no bytes; NaN parameters are left out
    if binary_output:
        parameters["binary_data_output"] = True
    if parameters:
        header["parameters"] = parameters
    if spec.outputs is not None:
        header["outputs"] = [
            {"name": name, "parameters": {k: v for k, v in p.items() if not isinstance(v, bytes) and v == v}}
            for name, p in spec.outputs
        ]
    if "surrogates" in extra:
        where = draw(
            st.sampled_from(["id", "input", "output", "parameter key", "parameter value", "data", "data"])
        )
        strings = [e for e in inputs if e["datatype"] == "BYTES" and e.get("data")]
        if where == "data" and strings:  # a BYTES element
            strings[0]["data"] = [SURROGATE, *json_values(np.array(strings[0]["data"]), False)[1:]]
        elif where == "id":
            header["id"] = SURROGATE
        elif where == "input" and inputs:
            inputs[0]["name"] += SURROGATE
        elif where == "output":
            header["outputs"] = [*header.get("outputs", []), {"name": SURROGATE}]
        else:
            parameters = header.setdefault("parameters", {})
            key, value = ("priority", SURROGATE) if where == "parameter value" else (SURROGATE, 1)
            parameters[key] = value
    if "structure" in extra:
        key = draw(st.sampled_from(["inputs", "parameters", "outputs", "id"]))
        header[key] = draw(JSON_JUNK)
    text = json.dumps(header).encode()
    headers = {"Content-Type": "application/json"}
    body = text
    if binary or any("binary_data_size" in (e.get("parameters") or {}) for e in inputs):
        body = text + b"".join(payload)
        headers["Inference-Header-Content-Length"] = str(len(text))
    if "header_length" in extra:
        headers["Inference-Header-Content-Length"] = draw(
            st.sampled_from(["-1", "x", "", " 3", str(len(body) + 1), "0", "1e3", str(2**70)])
        )
    if "not_json" in extra:
        body = draw(
            st.one_of(st.binary(max_size=64), st.sampled_from([b"[]", b"null", b"[" * 100_000, b"\xff"]))
        )
        headers.pop("Inference-Header-Content-Length", None)
    if "content_encoding" in extra:  # compressed properly, or not at all, or in a coding nobody knows
        coding = draw(st.sampled_from(["gzip", "deflate", "br", "gzip, gzip", "identity", "GZIP", ""]))
        headers["Content-Encoding"] = coding
        if draw(st.booleans()) and coding in ("gzip", "deflate", "GZIP"):
            wbits = 16 + zlib.MAX_WBITS if coding.lower() == "gzip" else zlib.MAX_WBITS
            packer = zlib.compressobj(wbits=wbits)
            body = packer.compress(body) + packer.flush()
            if draw(st.booleans()):
                body = body[: draw(st.integers(0, len(body)))]  # truncated
    path = f"/v2/models/{quote(spec.model, safe='')}"
    if spec.version:
        path += f"/versions/{quote(spec.version, safe='')}"
    return path + "/infer", body, headers, valid, binary_output


# ------------------------------------------------------------------------------------------------------------
# the actions and their checks


@dataclass
class Outcomes:
    counts: Counter[str] = field(default_factory=Counter)
    examples: int = 0

    def add(self, kind: str, status: Any) -> None:
        self.counts[f"{kind}:{getattr(status, 'name', status)}"] += 1


class Fuzzer:
    """One server, its channel and HTTP connection, and the checks every answer must pass."""

    def __init__(self, process: ServeProcess) -> None:
        self.process = process
        self.channel = grpc.insecure_channel(f"127.0.0.1:{process.port}")
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)
        self.infer = self.channel.unary_unary(INFER)
        self.stream = self.channel.stream_stream(STREAM)
        assert process.http_port is not None
        self.http = http.client.HTTPConnection("127.0.0.1", process.http_port, timeout=CALL_TIMEOUT_S)
        self.outcomes = Outcomes()

    def close(self) -> None:
        self.http.close()
        self.channel.close()

    def rss(self) -> int:
        for line in Path(f"/proc/{self.process.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def alive(self) -> None:
        assert self.process.proc.poll() is None, "the server exited:\n" + self.process.log[-5000:]
        assert self.stub.ServerLive(pb.ServerLiveRequest(), timeout=CALL_TIMEOUT_S).live

    def _fail(self, what: str) -> AssertionError:
        return AssertionError(f"{what}\nserver log tail:\n{self.process.log[-3000:]}")

    def _status(
        self, kind: str, code: grpc.StatusCode, details: str, allowed: frozenset[grpc.StatusCode] = ALLOWED
    ) -> None:
        self.outcomes.add(kind, code)
        if code not in allowed or (
            code == grpc.StatusCode.DEADLINE_EXCEEDED and details == "Deadline Exceeded"
        ):
            raise self._fail(f"{kind}: {code.name}: {details[:500]}")

    # ----- gRPC inference

    def model_infer(self, data: bytes, spec: Spec | None, valid: bool) -> None:
        try:
            answer = self.infer(data, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            self._status("infer", exc.code(), exc.details() or "")
            if valid:
                raise self._fail(f"a valid request failed: {exc.code().name}: {exc.details()}") from None
            return
        self.outcomes.add("infer", grpc.StatusCode.OK)
        response = pb.ModelInferResponse.FromString(answer)
        if valid:
            assert spec is not None
            check_grpc_outputs(spec, response)

    def stream_infer(self, messages: list[tuple[bytes, Spec | None, bool]]) -> None:
        try:
            answers = list(self.stream(iter([m for m, _, _ in messages]), timeout=CALL_TIMEOUT_S))
        except grpc.RpcError as exc:
            self._status("stream", exc.code(), exc.details() or "")
            raise self._fail(f"the stream ended with {exc.code().name}: {exc.details()}") from None
        assert len(answers) == len(messages), (len(answers), len(messages))
        for answer, (_, spec, valid) in zip(answers, messages):
            response = pb.ModelStreamInferResponse.FromString(answer)
            error = response.error_message
            self.outcomes.add("stream", "error" if error else "OK")
            # in-band errors carry no code: an unexpected exception reads "internal error: ...", ORT's own
            # failure "... onnxruntime failed: ..."
            if error.startswith("internal error") or "onnxruntime failed" in error:
                raise self._fail(f"stream message answered {error[:500]}")
            if valid:
                assert not error, f"a valid stream message failed: {error}"
                assert spec is not None
                check_grpc_outputs(spec, response.infer_response)

    # ----- gRPC protocol calls

    def protocol_call(self, method: str, name: str, version: str) -> None:
        calls: dict[str, Callable[[], Any]] = {
            "ModelMetadata": lambda: self.stub.ModelMetadata(
                pb.ModelMetadataRequest(name=name, version=version), timeout=CALL_TIMEOUT_S
            ),
            "ModelConfig": lambda: self.stub.ModelConfig(
                pb.ModelConfigRequest(name=name, version=version), timeout=CALL_TIMEOUT_S
            ),
            "ModelReady": lambda: self.stub.ModelReady(
                pb.ModelReadyRequest(name=name, version=version), timeout=CALL_TIMEOUT_S
            ),
            "ModelStatistics": lambda: self.stub.ModelStatistics(
                pb.ModelStatisticsRequest(name=name, version=version), timeout=CALL_TIMEOUT_S
            ),
        }
        try:
            answer = calls[method]()
        except grpc.RpcError as exc:
            self._status(method, exc.code(), exc.details() or "")
            return
        self.outcomes.add(method, grpc.StatusCode.OK)
        if method == "ModelReady" and answer.ready:  # only a loaded model's canonical version is ready
            assert name in MODELS or name == "admin", name
            assert version in ("", "1"), version

    def admin_call(self, method: str, name: str, parameters: dict[str, Any]) -> None:
        try:
            if method == "load":
                request = pb.RepositoryModelLoadRequest(model_name=name)
                for key, value in parameters.items():
                    set_parameter(request.parameters[key], value)
                self.stub.RepositoryModelLoad(request, timeout=CALL_TIMEOUT_S)
            else:
                self.stub.RepositoryModelUnload(
                    pb.RepositoryModelUnloadRequest(model_name=name), timeout=CALL_TIMEOUT_S
                )
        except grpc.RpcError as exc:
            # a rollback with no earlier version to go to is UNAVAILABLE (registry.py): the model's state
            self._status(f"admin-{method}", exc.code(), exc.details() or "", ADMIN_ALLOWED)
            return
        self.outcomes.add(f"admin-{method}", grpc.StatusCode.OK)

    # ----- HTTP

    def http_call(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, Any, bytes]:
        for attempt in range(2):
            try:
                self.http.request(method, path, body=body if method == "POST" else None, headers=headers)
                response = self.http.getresponse()
                return response.status, response, response.read()
            except (ConnectionError, http.client.HTTPException):
                # a connection the server closed after its last answer (Connection: close); once only
                self.http.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def http_infer(self, path: str, body: bytes, headers: dict[str, str], spec: Spec, valid: bool) -> None:
        status, response, content = self.http_call("POST", path, body, headers)
        self.outcomes.add("http", status)
        if status not in HTTP_ALLOWED:
            raise self._fail(f"HTTP {status} for POST {path[:200]}: {content[:500]!r}")
        if status != 200:
            error = json.loads(content)
            assert isinstance(error.get("error"), str), content[:200]
            if valid:
                raise self._fail(f"a valid HTTP request failed: {status} {content[:500]!r}")
            return
        if valid:
            check_http_outputs(spec, content, response.getheader("Inference-Header-Content-Length"))

    def http_get(self, method: str, path: str) -> None:
        status, _, content = self.http_call(method, path, b"", {})
        self.outcomes.add(f"http-{method}", status)
        if status not in HTTP_ALLOWED:
            raise self._fail(f"HTTP {status} for GET {path[:200]}: {content[:500]!r}")


def expected_outputs(spec: Spec) -> dict[str, np.ndarray]:
    feeds = {t.name: t.array for t in spec.tensors if t.array is not None}
    expected = MODELS[spec.model].outputs(feeds)
    if spec.outputs is not None:
        return {name: expected[name] for name, _ in spec.outputs}
    return expected


def check_grpc_outputs(spec: Spec, response: pb.ModelInferResponse) -> None:
    expected = expected_outputs(spec)
    names = [o.name for o in response.outputs]
    assert names == list(expected) if spec.outputs is not None else sorted(names) == sorted(expected), names
    assert len(response.raw_output_contents) == len(names)
    for output, raw in zip(response.outputs, response.raw_output_contents):
        want = expected[output.name]
        assert list(output.shape) == list(want.shape), (output.name, list(output.shape), want.shape)
        if output.datatype == "BYTES":
            assert raw == raw_of(want, "BYTES"), output.name
        else:
            got = np.frombuffer(raw, datatypes.BY_NAME[output.datatype].numpy).reshape(want.shape)
            np.testing.assert_array_equal(got, want, err_msg=output.name)


def check_http_outputs(spec: Spec, content: bytes, header_length: str | None) -> None:
    expected = expected_outputs(spec)
    end = int(header_length) if header_length is not None else len(content)
    header = json.loads(content[:end])
    offset = end
    outputs = header["outputs"]
    assert sorted(o["name"] for o in outputs) == sorted(expected)
    for output in outputs:
        want = expected[output["name"]]
        assert output["shape"] == list(want.shape), (output["name"], output["shape"], want.shape)
        size = (output.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            raw = content[offset : offset + size]
            offset += size
            if output["datatype"] == "BYTES":
                assert raw == raw_of(want, "BYTES"), output["name"]
                continue
            got = np.frombuffer(raw, datatypes.BY_NAME[output["datatype"]].numpy).reshape(want.shape)
        else:
            got = np.array(output["data"], dtype=want.dtype).reshape(want.shape)
        np.testing.assert_array_equal(got, want, err_msg=output["name"])
    assert offset == len(content)


@st.composite
def actions(draw: st.DrawFn) -> tuple[str, tuple[Any, ...]]:
    kind = draw(
        st.sampled_from(
            ["infer"] * 6
            + ["stream"] * 2
            + ["http"] * 5
            + ["http-raw", "protocol", "protocol", "http-get"]
            + ["admin"]
        )
    )
    if kind == "infer":
        return kind, draw(infer_messages())
    if kind == "stream":
        return kind, (draw(st.lists(infer_messages(), min_size=1, max_size=4)),)
    if kind == "http":
        spec = draw(specs())
        return kind, (*http_request(draw, spec), spec)
    if kind == "http-raw":  # an infer body of random bytes, with or without a header length
        body = draw(st.binary(max_size=100))
        headers = draw(st.sampled_from([{}, {"Inference-Header-Content-Length": str(len(body) // 2)}]))
        model = draw(st.one_of(st.sampled_from(sorted(MODELS)), NAMES))
        return kind, (f"/v2/models/{quote(model, safe='')}/infer", body, headers)
    versions = st.one_of(st.sampled_from(["", "1"] + WEIRD_VERSIONS), st.text(max_size=4))
    names = st.one_of(st.sampled_from(sorted(MODELS)), NAMES)
    if kind == "protocol":
        method = draw(st.sampled_from(["ModelMetadata", "ModelConfig", "ModelReady", "ModelStatistics"]))
        return kind, (method, draw(names), draw(versions))
    if kind == "http-get":
        name, version = quote(draw(names), safe=""), quote(draw(versions), safe="")
        suffix = draw(st.sampled_from(["", "/ready", "/config", "/stats"]))
        method = draw(st.sampled_from(["GET", "GET", "GET", "PUT", "DELETE", "HEAD", "OPTIONS"]))
        return kind, (method, f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + suffix)
    # the repository calls, on the model kept for them ("admin") or on names not in the repository; never a
    # load that would succeed with a new config (each would cost a model load)
    method = draw(st.sampled_from(["load", "load", "unload"]))
    name = draw(st.one_of(st.just("admin"), NAMES))
    parameters = draw(
        st.dictionaries(
            st.sampled_from(
                ["config", "hotwire.rollback", "hotwire.traffic", "file:1/model.onnx", "file:../x"]
            ),
            st.one_of(
                st.sampled_from(
                    [
                        "",
                        "{",
                        '{"max_batch_size": -1}',
                        '{"max_batch_size": "x"}',
                        '{"input": 3}',
                        b"\xff\xfe",
                        '{"canary_weight": 2}',
                        '{"stable": 99}',
                        "[" * 1000,
                        "1",
                        "01",
                        "²",
                    ]
                ),
                parameter_values(),
            ),
            max_size=2,
        )
    )
    return "admin", (method, name, parameters)


def run_action(fuzzer: Fuzzer, action: tuple[str, tuple[Any, ...]]) -> None:
    kind, args = action
    fuzzer.outcomes.examples += 1
    if kind == "infer":
        fuzzer.model_infer(*args)
    elif kind == "stream":
        fuzzer.stream_infer(*args)
    elif kind == "http":
        path, body, headers, valid, _, spec = args
        fuzzer.http_infer(path, body, headers, spec, valid)
    elif kind == "http-raw":
        path, body, headers = args
        status, _, content = fuzzer.http_call("POST", path, body, headers)
        fuzzer.outcomes.add("http-raw", status)
        if status not in HTTP_ALLOWED:
            raise fuzzer._fail(f"HTTP {status} for POST {path[:200]}: {content[:500]!r}")
    elif kind == "protocol":
        fuzzer.protocol_call(*args)
    elif kind == "http-get":
        fuzzer.http_get(*args)
    else:
        fuzzer.admin_call(*args)


def fuzz(fuzzer: Fuzzer, examples: int, chosen_seed: int) -> None:
    @seed(chosen_seed)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(actions())
    def property_(action: tuple[str, tuple[Any, ...]]) -> None:
        run_action(fuzzer, action)

    property_()


# ------------------------------------------------------------------------------------------------------------
# the runs


@dataclass
class FuzzServer:
    fuzzer: Fuzzer
    rss_baseline: int


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzServer]:
    repository = write_repository(tmp_path_factory.mktemp("fuzz-repository"))
    args = ["--model-repository", str(repository), "--grpc-port", "0", "--metrics-port", "-1"]
    args += ["--host", "127.0.0.1", "--model-control-mode", "explicit"]
    for name in (*MODELS, "admin"):
        args += ["--load-model", name]
    process = ServeProcess(args)
    try:
        process.wait_listening()
        fuzzer = Fuzzer(process)
        try:
            fuzzer.alive()
            fuzz(fuzzer, WARM_UP_EXAMPLES, FIXED_SEED + 1)  # every code path, cache and arena touched once
            yield FuzzServer(fuzzer, fuzzer.rss())
        finally:
            fuzzer.close()
    finally:
        process.close()


def report(name: str, fuzz_server: FuzzServer, chosen_seed: int, examples: int, elapsed: float) -> int:
    fuzzer = fuzz_server.fuzzer
    rss = fuzzer.rss()
    counts = ", ".join(f"{key} {count}" for key, count in sorted(fuzzer.outcomes.counts.items()))
    print(
        f"\nfuzz {name}: {examples} examples, seed {chosen_seed}, {elapsed:.1f} s; RSS after warm-up "
        f"{fuzz_server.rss_baseline / 2**20:.1f} MiB, now {rss / 2**20:.1f} MiB "
        f"({(rss - fuzz_server.rss_baseline) / 2**20:+.1f} MiB)\n  outcomes: {counts}"
    )
    return rss


def run_and_check(name: str, fuzz_server: FuzzServer, chosen_seed: int) -> None:
    fuzzer = fuzz_server.fuzzer
    fuzzer.outcomes = Outcomes()
    started = time.monotonic()
    fuzz(fuzzer, FUZZ_EXAMPLES, chosen_seed)
    elapsed = time.monotonic() - started
    examples = fuzzer.outcomes.examples
    rss = report(name, fuzz_server, chosen_seed, examples, elapsed)
    fuzzer.alive()
    log = fuzzer.process.log
    assert "Traceback" not in log and "unexpected error" not in log, log[-5000:]
    assert examples >= FUZZ_EXAMPLES
    ok = fuzzer.outcomes.counts
    # the generator reaches the models, not only the decoders: a good share of answers are successes
    assert ok["infer:OK"] > examples // 20 and ok["http:200"] > examples // 20 and ok["stream:OK"], ok
    assert rss - fuzz_server.rss_baseline < FUZZ_RSS_BOUND, (rss, fuzz_server.rss_baseline)


def test_fuzz_with_a_fixed_seed(fuzz_server: FuzzServer) -> None:
    run_and_check("fixed seed", fuzz_server, FIXED_SEED)


def test_fuzz_with_a_random_seed(fuzz_server: FuzzServer) -> None:
    chosen = int(os.environ.get("FUZZ_SEED") or random.SystemRandom().randrange(2**32))
    print(f"\nfuzz random seed: {chosen} (rerun it with FUZZ_SEED={chosen})")
    run_and_check("random seed", fuzz_server, chosen)


# ------------------------------------------------------------------------------------------------------------
# what the fuzzing found, each as the exact request that triggered it


def reshape_repository(root: Path, target: str) -> Path:
    """Model `r`: FP32 x [batch, -1] served to ONNX's [batch, n, k] through config `reshape` `target`."""
    shape: list[str | int] = ["batch", "n", "k"]
    model = tiny_model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    config = f'max_batch_size: 8\ninput [ {{ name: "x" dims: [ -1 ] reshape: {{ shape: {target} }} }} ]\n'
    write_model(root, "r", model, config)
    return root


@pytest.mark.parametrize(
    ("target", "shape", "answer"),
    [
        # the fuzz's find: 1 element into [-1, 2] was "ValueError: cannot reshape array of size 1 into shape
        # (1,newaxis,2)", INTERNAL
        (
            "[ -1, 2 ]",
            [1, 1],
            "input 'x': shape [1, 1] (1 elements) cannot be reshaped to the model's [1, -1, 2]",
        ),
        ("[ -1, 2 ]", [1, 3], "cannot be reshaped"),
        ("[ -1, 0 ]", [1, 0], "cannot be reshaped"),  # size 0 into (1,newaxis,0): no extent to infer
        ("[ -1, -1 ]", [2, 4], "more than one variable dimension"),
        ("[ -1, 2 ]", [2, 6], [2, 3, 2]),
        ("[ -1, 2 ]", [1, 0], [1, 0, 2]),  # zero-size: still served
    ],
)
def test_a_reshape_to_a_variable_dimension_checks_the_element_count(
    tmp_path, running_server, stub_for, target, shape, answer
):
    server = running_server(reshape_repository(tmp_path, target))
    stub = stub_for(server)
    x = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    request = pb.ModelInferRequest(model_name="r")
    request.inputs.add(name="x", datatype="FP32", shape=shape)
    request.raw_input_contents.append(x.tobytes())
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": shape, "data": x.ravel().tolist()}]}
    )
    connection = http.client.HTTPConnection("127.0.0.1", server.app.http_port, timeout=30)
    connection.request("POST", "/v2/models/r/infer", body=body)
    http_answer = connection.getresponse()
    http_body = json.loads(http_answer.read())
    connection.close()
    if isinstance(answer, list):
        response = stub.ModelInfer(request, timeout=30)
        assert list(response.outputs[0].shape) == answer
        np.testing.assert_array_equal(np.frombuffer(response.raw_output_contents[0], np.float32), x.ravel())
        assert http_answer.status == 200 and http_body["outputs"][0]["shape"] == answer
        return
    with pytest.raises(grpc.RpcError) as caught:
        stub.ModelInfer(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and answer in caught.value.details()
    assert http_answer.status == 400 and answer in http_body["error"]
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live


def test_a_lone_surrogate_in_json_bytes_data_is_400_not_500(tmp_path, running_server):
    """The fuzz's find: JSON may escape a lone surrogate ("\\ud800"), which json.loads keeps; ONNX Runtime
    then failed to encode the string tensor: HTTP 500 "onnxruntime failed: 'utf-8' codec can't encode"."""
    server = running_server(write_repository(tmp_path))
    connection = http.client.HTTPConnection("127.0.0.1", server.app.http_port, timeout=30)
    for model, name, shape in (("types_fixed", "in_BYTES", [3]), ("types", "in_BYTES", [1, 3])):
        data: dict[str, list[Any]] = {"BYTES": ["a", "\ud800", "b"], "BOOL": [False] * 3}
        inputs = [
            {"name": f"in_{d}", "datatype": d, "shape": shape, "data": data.get(d, [0] * 3)}
            for d in datatypes.BY_NAME
        ]
        connection.request("POST", f"/v2/models/{model}/infer", body=json.dumps({"inputs": inputs}))
        answer = connection.getresponse()
        error = json.loads(answer.read())["error"]
        assert answer.status == 400 and f"input '{name}'" in error and "surrogate" in error, error
    connection.close()


def test_a_config_parameter_in_bytes_is_read_as_utf8_json(tmp_path, running_server, stub_for):
    """RepositoryModelLoad's `config` as a bytes_param: non-UTF-8 bytes are INVALID_ARGUMENT saying so (they
    were parsed as their Python repr "b'\\xff...'", "not valid JSON at line 1 column 1"), and UTF-8 JSON in
    bytes loads like the string form. A non-UTF-8 config.pbtxt, on disk or uploaded beside a `config`, is
    never INTERNAL either."""
    write_model(tmp_path, "simple", add_sub(), SIMPLE_CONFIG)
    write_model(tmp_path, "broken", add_sub(), None)
    (tmp_path / "broken" / "config.pbtxt").write_bytes(b'name: "broken" # \xff\xfe\n')
    server = running_server(tmp_path, model_control_mode="explicit")
    stub = stub_for(server)
    model_file = add_sub().SerializeToString()

    def load(name: str, **parameters: str | bytes) -> grpc.RpcError | None:
        request = pb.RepositoryModelLoadRequest(model_name=name)
        for key, value in parameters.items():
            set_parameter(request.parameters[key], value)
        try:
            stub.RepositoryModelLoad(request, timeout=60)
        except grpc.RpcError as exc:
            return exc
        return None

    refused = load("up", config=b'\xff{"max_batch_size": 4}', **{"file:1/model.onnx": model_file})
    assert refused is not None and refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "parameter 'config': not UTF-8 text (byte 0)" in refused.details()
    assert load("up", config=b'{"max_batch_size": 4}', **{"file:1/model.onnx": model_file}) is None
    assert stub.ModelConfig(pb.ModelConfigRequest(name="up"), timeout=30).config.max_batch_size == 4
    on_disk = load("broken")
    assert on_disk is not None and on_disk.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "config.pbtxt: not UTF-8 text" in on_disk.details()
    uploaded = {"file:1/model.onnx": model_file, "file:config.pbtxt": b"\xff\xfe"}
    assert load("beside", config='{"max_batch_size": 2}', **uploaded) is None  # `config` replaces the file
    assert stub.ModelReady(pb.ModelReadyRequest(name="beside"), timeout=30).ready


def test_a_deeply_nested_traffic_update_is_invalid_argument(tmp_path, running_server, stub_for):
    """The fuzz's find: `hotwire.traffic` "[" * 1000 was INTERNAL "RecursionError: maximum recursion depth
    exceeded while decoding a JSON array" (traffic.parse_update catches JSONDecodeError only)."""
    server = running_server(write_repository(tmp_path))
    stub = stub_for(server)
    before = server.app.registry.entry("admin").policy
    request = pb.RepositoryModelLoadRequest(model_name="admin")
    request.parameters["hotwire.traffic"].string_param = "[" * 1000
    with pytest.raises(grpc.RpcError) as caught:
        stub.RepositoryModelLoad(request, timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.details() == "parameter 'hotwire.traffic': its JSON is nested too deeply"
    assert server.app.registry.entry("admin").policy == before


def test_a_deeply_nested_fallback_response_in_an_uploaded_config_is_invalid_argument(
    tmp_path, running_server, stub_for
):
    write_model(tmp_path, "simple", add_sub(), SIMPLE_CONFIG)
    server = running_server(tmp_path, model_control_mode="explicit", load_model=("simple",))
    config = {"max_batch_size": 8, "parameters": {"fallback_response": {"string_value": "[" * 100_000}}}
    request = pb.RepositoryModelLoadRequest(model_name="simple")
    request.parameters["config"].string_param = json.dumps(config)
    with pytest.raises(grpc.RpcError) as caught:
        stub_for(server).RepositoryModelLoad(request, timeout=60)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()


@pytest.mark.parametrize("method", ["ModelMetadata", "ModelReady", "ServerLive", "RepositoryModelLoad"])
def test_undecodable_bytes_to_a_protocol_method_are_invalid_argument(tmp_path, running_server, method):
    server = running_server(tmp_path)
    channel = grpc.insecure_channel(server.address)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            channel.unary_unary(f"/inference.GRPCInferenceService/{method}")(b"\xff\xff\xff", timeout=30)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    finally:
        channel.close()
