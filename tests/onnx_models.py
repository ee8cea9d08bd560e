"""Tiny ONNX models for tests, built with onnx.helper, and a writer for Triton-layout repositories."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OPSET = 17

# Protocol datatype -> ONNX element type; every datatype the server supports.
ONNX_TYPES: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def tiny_model(nodes: list, inputs: list, outputs: list, initializers: list | None = None) -> onnx.ModelProto:
    """A checked model of the given nodes (opset OPSET, IR version 8: what every onnxruntime here loads)."""
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=initializers or [])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="hotwire-tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def matmul_chain(layers: int = 30, width: int = 256) -> onnx.ModelProto:
    """Slow enough (tens of ms at batch 64 on one core) that requests queue behind each other."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(
            (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32), f"w{i}"
        )
        for i in range(layers)
    ]
    nodes = [
        helper.make_node(
            "MatMul", ["x" if i == 0 else f"h{i - 1}", f"w{i}"], [f"h{i}" if i < layers - 1 else "y"]
        )
        for i in range(layers)
    ]
    return tiny_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        weights,
    )


def identity_all_types(dims: tuple[int, ...] = (3,), batched: bool = True) -> onnx.ModelProto:
    """For every datatype D: input `in_D` -> Identity -> output `out_D`, shape [batch?] + dims."""
    shape = (["batch"] if batched else []) + list(dims)
    nodes, inputs, outputs = [], [], []
    for name, elem in ONNX_TYPES.items():
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
        inputs.append(helper.make_tensor_value_info(f"in_{name}", elem, shape))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", elem, shape))
    return tiny_model(nodes, inputs, outputs)


# Triton's 'simple' example model (add_sub) as its config.pbtxt declares it
SIMPLE_CONFIG = """
name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  { name: "INPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "INPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
output [
  { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 16 ] },
  { name: "OUTPUT1" data_type: TYPE_FP32 dims: [ 16 ] }
]
dynamic_batching { }
instance_group [ { count: 1, kind: KIND_CPU } ]
"""


def add_sub(width: int = 16, batched: bool = True, offset: float = 0.0) -> onnx.ModelProto:
    """Triton's 'simple' model: OUTPUT0 = INPUT0 + INPUT1 + offset, OUTPUT1 = INPUT0 - INPUT1 (FP32)."""
    shape = (["batch"] if batched else []) + [width]
    bias = numpy_helper.from_array(np.array(offset, dtype=np.float32), "offset")
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["sum"]),
        helper.make_node("Add", ["sum", "offset"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ]
    io = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, shape)  # noqa: E731
    return tiny_model(nodes, [io("INPUT0"), io("INPUT1")], [io("OUTPUT0"), io("OUTPUT1")], [bias])


def write_model(
    root: Path, name: str, model: onnx.ModelProto | bytes | None, config: str | None = None, version: int = 1
) -> Path:
    """Write `<root>/<name>/config.pbtxt` (when given) and `<root>/<name>/<version>/model.onnx`."""
    model_dir = root / name
    (model_dir / str(version)).mkdir(parents=True, exist_ok=True)
    if config is not None:
        (model_dir / "config.pbtxt").write_text(config)
    if model is not None:
        data = model if isinstance(model, bytes) else model.SerializeToString()
        (model_dir / str(version) / "model.onnx").write_bytes(data)
    return model_dir


def add_sub_int32(width: int = 16) -> onnx.ModelProto:
    """Triton's 'simple' model as its examples use it: INT32 [batch, width] inputs INPUT0 and INPUT1,
    OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""
    shape: list[str | int] = ["batch", width]
    nodes = [
        helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
        helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"]),
    ]
    io = lambda n: helper.make_tensor_value_info(n, TensorProto.INT32, shape)  # noqa: E731
    return tiny_model(nodes, [io("INPUT0"), io("INPUT1")], [io("OUTPUT0"), io("OUTPUT1")])


def add_sub_string(width: int = 16) -> onnx.ModelProto:
    """Triton's 'simple_string': BYTES inputs holding decimal integers, parsed to INT32; OUTPUT0 and OUTPUT1
    are their sum and difference written back as decimal strings (an empty string fails the Cast)."""
    shape: list[str | int] = ["batch", width]
    nodes = [
        helper.make_node("Cast", [name], [f"{name}_int"], to=TensorProto.INT32)
        for name in ("INPUT0", "INPUT1")
    ]
    nodes += [
        helper.make_node("Add", ["INPUT0_int", "INPUT1_int"], ["sum"]),
        helper.make_node("Sub", ["INPUT0_int", "INPUT1_int"], ["difference"]),
        helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=TensorProto.STRING),
        helper.make_node("Cast", ["difference"], ["OUTPUT1"], to=TensorProto.STRING),
    ]
    io = lambda n: helper.make_tensor_value_info(n, TensorProto.STRING, shape)  # noqa: E731
    return tiny_model(nodes, [io("INPUT0"), io("INPUT1")], [io("OUTPUT0"), io("OUTPUT1")])


def bytes_identity(width: int = 16) -> onnx.ModelProto:
    """Triton's 'simple_identity': BYTES [batch, width] INPUT0 -> Identity -> OUTPUT0."""
    shape: list[str | int] = ["batch", width]
    return tiny_model(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        [helper.make_tensor_value_info("INPUT0", TensorProto.STRING, shape)],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, shape)],
    )


_SESSIONS: dict[int, ort.InferenceSession] = {}


def ort_reference(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """In-process ORT, the answer a server must give; BYTES go in as str and come back as bytes (as
    tritonclient's as_numpy returns them)."""
    session = _SESSIONS.get(id(model))
    if session is None:
        session = _SESSIONS[id(model)] = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
    converted = {
        n: (np.vectorize(lambda b: b.decode(), otypes=[object])(a) if a.dtype == object else a)
        for n, a in feeds.items()
    }
    names = [o.name for o in session.get_outputs()]
    out = {}
    for name, array in zip(names, session.run(names, converted)):
        if array.dtype == object:
            array = np.vectorize(lambda s: s.encode(), otypes=[object])(array)
        out[name] = array
    return out


def simple_inputs(rows: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Random INPUT0 and INPUT1 for Triton's 'simple' model (add_sub)."""
    rng = np.random.default_rng(seed)
    return {n: rng.standard_normal((rows, 16)).astype(np.float32) for n in ("INPUT0", "INPUT1")}
