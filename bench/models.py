"""Deterministic ONNX models used by the bundled examples, the benchmarks and the tests.

Every builder returns an :class:`onnx.ModelProto` (opset 17, IR version 8, so that
onnxruntime 1.18 and later can load it) whose weights come from
``numpy.random.default_rng(seed)`` with a fixed seed, and which has been validated
with :func:`onnx.checker.check_model`. Nothing time- or host-dependent goes into the
models, so building one twice yields byte-identical serialisations; the test-suite
relies on that to check that ``server/example_repository`` is up to date.

Models:

* :func:`small_classifier` -- tiny FP32 MLP with a softmax head (example ``classifier``).
* :func:`image_classifier_uint8` -- UINT8 NHWC image in, softmax out (example
  ``image_classifier``); exercises non-float inputs and preprocessing inside the graph.
* :func:`wide_mlp` -- compute-heavy FP32 MLP for throughput benchmarks.
* :func:`small_mlp` -- 64->256->256->10 FP32 MLP whose cost is the transport's (client benchmark).
* :func:`convnet` -- small CNN on 3x224x224 images for latency benchmarks.
* :func:`transformer_encoder` -- small transformer encoder on padded INT64 token ids plus their attention
  mask (the benchmark zoo's ``transformer``, behind a ``pad_truncate`` pipeline).

``onnx`` is a test/benchmark dependency, not a core one: nothing under
``hotwire.server`` may import this module.

Regenerate the bundled example repository with::

    python -m hotwire.bench.models --example-repository server/example_repository
"""

from __future__ import annotations

import argparse
import math
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "OPSET",
    "IR_VERSION",
    "PRODUCER_NAME",
    "CLASSIFIER_CONFIG",
    "IMAGE_CLASSIFIER_CONFIG",
    "IMAGE_CLASSIFIER_PIPELINE",
    "image_classifier_nchw",
    "small_classifier",
    "image_classifier_uint8",
    "wide_mlp",
    "small_mlp",
    "convnet",
    "transformer_encoder",
    "example_models",
    "serialize_model",
    "write_model_repository",
    "write_example_repository",
    "main",
]

OPSET = 17
IR_VERSION = 8
PRODUCER_NAME = "hotwire"
PRODUCER_VERSION = "1"

_BATCH = "batch"


# --------------------------------------------------------------------------- helpers


class _Graph:
    """Small accumulator for nodes and initializers with deterministic naming."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._counter = 0

    def _name(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}_{self._counter}"

    def const(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name=name))
        return name

    def node(self, op: str, inputs: Sequence[str], output: str | None = None, **attrs: Any) -> str:
        # attrs: ONNX attribute values of any kind (ints, floats, strings, lists, tensors), as make_node takes
        # them
        out = output if output is not None else self._name(op.lower())
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=self._name(op), **attrs))
        return out

    def uniform(self, shape: Sequence[int], fan_in: int) -> np.ndarray:
        bound = 1.0 / math.sqrt(fan_in)
        return self.rng.uniform(-bound, bound, size=tuple(shape)).astype(np.float32)

    def gemm(self, x: str, k: int, n: int, prefix: str, output: str | None = None) -> str:
        w = self.const(f"{prefix}.weight", self.uniform((k, n), k))
        b = self.const(f"{prefix}.bias", self.uniform((n,), k))
        return self.node("Gemm", [x, w, b], output)

    def conv(
        self, x: str, c_in: int, c_out: int, prefix: str, *, kernel: int = 3, stride: int = 1, pad: int = 1
    ) -> str:
        fan_in = c_in * kernel * kernel
        w = self.const(f"{prefix}.weight", self.uniform((c_out, c_in, kernel, kernel), fan_in))
        b = self.const(f"{prefix}.bias", self.uniform((c_out,), fan_in))
        return self.node(
            "Conv",
            [x, w, b],
            kernel_shape=[kernel, kernel],
            strides=[stride, stride],
            pads=[pad, pad, pad, pad],
        )

    def model(
        self,
        name: str,
        inputs: Sequence[onnx.ValueInfoProto],
        outputs: Sequence[onnx.ValueInfoProto],
        doc: str,
    ) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, name, list(inputs), list(outputs), initializer=self.initializers, doc_string=doc
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", OPSET)],
            ir_version=IR_VERSION,
            producer_name=PRODUCER_NAME,
            producer_version=PRODUCER_VERSION,
            doc_string=doc,
        )
        onnx.checker.check_model(model, full_check=True)
        return model


def _tensor(name: str, elem_type: int, dims: Sequence[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, [_BATCH, *dims])


# --------------------------------------------------------------------------- builders


def small_classifier(seed: int = 0) -> onnx.ModelProto:
    """``input`` FP32 [batch, 16] -> Gemm(16->32) -> Relu -> Gemm(32->4) -> Softmax
    -> ``probabilities`` FP32 [batch, 4]."""
    g = _Graph(seed)
    h = g.gemm("input", 16, 32, "fc1")
    h = g.node("Relu", [h])
    h = g.gemm(h, 32, 4, "fc2")
    g.node("Softmax", [h], "probabilities", axis=-1)
    return g.model(
        "small_classifier",
        [_tensor("input", TensorProto.FLOAT, [16])],
        [_tensor("probabilities", TensorProto.FLOAT, [4])],
        "Tiny 16->32->4 MLP classifier with softmax output.",
    )


def image_classifier_uint8(height: int = 64, width: int = 64, seed: int = 1) -> onnx.ModelProto:
    """``image`` UINT8 [batch, H, W, 3] (NHWC) -> scale to [0, 1] -> NCHW -> Conv(3->8, k3 s2) -> Relu
    -> GlobalAveragePool -> Flatten -> Gemm(8->10) -> Softmax -> ``probabilities`` FP32 [batch, 10]."""
    g = _Graph(seed)
    x = g.node("Cast", ["image"], to=TensorProto.FLOAT)
    scale = g.const("scale", np.array(1.0 / 255.0, dtype=np.float32))
    x = g.node("Mul", [x, scale])
    x = g.node("Transpose", [x], perm=[0, 3, 1, 2])
    x = g.conv(x, 3, 8, "conv1", kernel=3, stride=2, pad=1)
    x = g.node("Relu", [x])
    x = g.node("GlobalAveragePool", [x])
    x = g.node("Flatten", [x], axis=1)
    x = g.gemm(x, 8, 10, "fc")
    g.node("Softmax", [x], "probabilities", axis=-1)
    return g.model(
        "image_classifier_uint8",
        [_tensor("image", TensorProto.UINT8, [height, width, 3])],
        [_tensor("probabilities", TensorProto.FLOAT, [10])],
        f"UINT8 NHWC {height}x{width} RGB image classifier with 10 classes and softmax output.",
    )


def image_classifier_nchw(height: int = 64, width: int = 64, seed: int = 1) -> onnx.ModelProto:
    """``input`` FP32 [batch, 3, H, W] (normalized NCHW, as the bundled preprocessing pipeline produces it)
    -> Conv(3->8, k3 s2) -> Relu -> GlobalAveragePool -> Flatten -> Gemm(8->10) -> Softmax ->
    ``probabilities``."""
    g = _Graph(seed)
    x = g.conv("input", 3, 8, "conv1", kernel=3, stride=2, pad=1)
    x = g.node("Relu", [x])
    x = g.node("GlobalAveragePool", [x])
    x = g.node("Flatten", [x], axis=1)
    x = g.gemm(x, 8, 10, "fc")
    g.node("Softmax", [x], "probabilities", axis=-1)
    return g.model(
        "image_classifier",
        [_tensor("input", TensorProto.FLOAT, [3, height, width])],
        [_tensor("probabilities", TensorProto.FLOAT, [10])],
        f"Normalized FP32 NCHW {height}x{width} image classifier with 10 classes and softmax output.",
    )


def _mlp(name: str, widths: Sequence[int], seed: int, doc: str) -> onnx.ModelProto:
    """``input`` FP32 [batch, widths[0]] -> Gemm -> Relu -> ... -> Gemm -> ``logits`` FP32
    [batch, widths[-1]]."""
    g = _Graph(seed)
    h = "input"
    layers = list(zip(widths[:-1], widths[1:]))
    for number, (k, n) in enumerate(layers, start=1):
        last = number == len(layers)
        h = g.gemm(h, k, n, f"fc{number}", output="logits" if last else None)
        if not last:
            h = g.node("Relu", [h])
    return g.model(
        name,
        [_tensor("input", TensorProto.FLOAT, [widths[0]])],
        [_tensor("logits", TensorProto.FLOAT, [widths[-1]])],
        doc,
    )


def wide_mlp(seed: int = 2) -> onnx.ModelProto:
    """``input`` FP32 [batch, 512] -> Gemm(512->2048) -> Relu -> Gemm(2048->2048) -> Relu -> Gemm(2048->10)
    -> ``logits`` FP32 [batch, 10]. About 5.2 M parameters (~21 MB); compute-heavy benchmark model."""
    return _mlp("wide_mlp", (512, 2048, 2048, 10), seed, "Wide 512->2048->2048->10 MLP producing logits.")


def small_mlp(seed: int = 4) -> onnx.ModelProto:
    """``input`` FP32 [batch, 64] -> Gemm(64->256) -> Relu -> Gemm(256->256) -> Relu -> Gemm(256->10) ->
    ``logits`` FP32 [batch, 10]: little compute (~85 k parameters), so the transport and the client
    dominate — the model of the client and small-model benchmarks."""
    return _mlp("small_mlp", (64, 256, 256, 10), seed, "Small 64->256->256->10 MLP producing logits.")


def convnet(seed: int = 3) -> onnx.ModelProto:
    """``input`` FP32 [batch, 3, 224, 224] -> Conv/Relu/MaxPool stack -> GlobalAveragePool -> Flatten
    -> Gemm(64->1000) -> ``logits`` FP32 [batch, 1000]. About 0.25 GMAC per image: a few ms per image
    on one CPU core."""
    g = _Graph(seed)
    x = g.conv("input", 3, 16, "conv1", stride=2)  # 16 x 112 x 112
    x = g.node("Relu", [x])
    x = g.conv(x, 16, 32, "conv2", stride=1)  # 32 x 112 x 112
    x = g.node("Relu", [x])
    x = g.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])  # 32 x 56 x 56
    x = g.conv(x, 32, 64, "conv3", stride=1)  # 64 x 56 x 56
    x = g.node("Relu", [x])
    x = g.conv(x, 64, 64, "conv4", stride=1)  # 64 x 56 x 56
    x = g.node("Relu", [x])
    x = g.node("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])  # 64 x 28 x 28
    x = g.conv(x, 64, 64, "conv5", stride=2)  # 64 x 14 x 14
    x = g.node("Relu", [x])
    x = g.node("GlobalAveragePool", [x])
    x = g.node("Flatten", [x], axis=1)
    g.gemm(x, 64, 1000, "fc", output="logits")
    return g.model(
        "convnet",
        [_tensor("input", TensorProto.FLOAT, [3, 224, 224])],
        [_tensor("logits", TensorProto.FLOAT, [1000])],
        "Small CNN for 3x224x224 images producing 1000 logits.",
    )


def _layer_norm(g: _Graph, x: str, width: int, prefix: str) -> str:
    scale = g.const(f"{prefix}.weight", np.ones(width, np.float32))
    bias = g.const(f"{prefix}.bias", np.zeros(width, np.float32))
    return g.node("LayerNormalization", [x, scale, bias], axis=-1, epsilon=1e-5)


def _linear(g: _Graph, x: str, k: int, n: int, prefix: str) -> str:
    """x [..., k] @ W [k, n] + b: MatMul (Gemm takes 2-D inputs only) on a [batch, length, k] tensor."""
    w = g.const(f"{prefix}.weight", g.uniform((k, n), k))
    b = g.const(f"{prefix}.bias", g.uniform((n,), k))
    return g.node("Add", [g.node("MatMul", [x, w]), b])


def _self_attention(g: _Graph, x: str, mask_bias: str, width: int, heads: int, prefix: str) -> str:
    """Multi-head self-attention on x [batch, length, width]; mask_bias [batch, 1, 1, length] is added to
    the scores (0 on tokens, a large negative number on padding)."""
    head = width // heads
    split = g.const(f"{prefix}.split_shape", np.array([0, 0, heads, head], np.int64))
    merge = g.const(f"{prefix}.merge_shape", np.array([0, 0, width], np.int64))

    def project(name: str, perm: list[int]) -> str:
        h = g.node("Reshape", [_linear(g, x, width, width, f"{prefix}.{name}"), split])  # [b, l, heads, head]
        return g.node("Transpose", [h], perm=perm)

    q = project("query", [0, 2, 1, 3])  # [b, heads, l, head]
    k = project("key", [0, 2, 3, 1])  # [b, heads, head, l]
    v = project("value", [0, 2, 1, 3])  # [b, heads, l, head]
    scale = g.const(f"{prefix}.scale", np.array(1.0 / math.sqrt(head), np.float32))
    scores = g.node("Add", [g.node("Mul", [g.node("MatMul", [q, k]), scale]), mask_bias])
    weights = g.node("Softmax", [scores], axis=-1)  # [b, heads, l, l]
    context = g.node("Transpose", [g.node("MatMul", [weights, v])], perm=[0, 2, 1, 3])  # [b, l, heads, head]
    return _linear(g, g.node("Reshape", [context, merge]), width, width, f"{prefix}.output")


def _gelu(g: _Graph, x: str, prefix: str) -> str:
    """x * 0.5 * (1 + erf(x / sqrt(2))): opset 17 has no Gelu (ONNX Runtime fuses this pattern)."""
    root2 = g.const(f"{prefix}.sqrt2", np.array(math.sqrt(2.0), np.float32))
    one = g.const(f"{prefix}.one", np.array(1.0, np.float32))
    half = g.const(f"{prefix}.half", np.array(0.5, np.float32))
    erf = g.node("Erf", [g.node("Div", [x, root2])])
    return g.node("Mul", [g.node("Mul", [x, g.node("Add", [erf, one])]), half])


def transformer_encoder(
    seed: int = 5,
    vocab: int = 1000,
    length: int = 128,
    width: int = 64,
    heads: int = 2,
    layers: int = 2,
    classes: int = 4,
) -> onnx.ModelProto:
    """``input_ids`` INT64 [batch, length] and ``attention_mask`` INT64 [batch, length] (1 on tokens, 0 on
    padding, as the ``pad_truncate`` preprocessing step produces them) -> token + position embedding ->
    ``layers`` post-LN encoder blocks (multi-head self-attention with the mask added to its scores, residual,
    LayerNormalization, GELU feed-forward of 4 x width, residual, LayerNormalization) -> mean over the
    unmasked positions -> Gemm(width->classes) -> ``logits`` FP32 [batch, classes].

    Padding never reaches the answer: masked keys get -1e4 added to their scores, whose exponent underflows
    to exactly 0 in float32, and the pooling multiplies masked positions by 0; so a sequence's logits are the
    same whatever its padding holds and whatever it is batched with. Token ids outside [0, vocab) are clamped
    into it (an id Gather rejects would fail the whole batch it is in). An all-padding row pools to 0 (the
    count is clamped to 1) instead of NaN."""
    if width % heads:
        raise ValueError(f"width {width} is not a multiple of heads {heads}")
    g = _Graph(seed)
    tokens = g.const("embedding.tokens", g.uniform((vocab, width), width))
    positions = g.const("embedding.positions", g.uniform((length, width), width))
    # Ids outside [0, vocab) are clamped: Gather would fail on one, and with it every request of its batch
    lowest = g.const("embedding.lowest_id", np.array(0, np.int64))
    highest = g.const("embedding.highest_id", np.array(vocab - 1, np.int64))
    ids = g.node("Clip", ["input_ids", lowest, highest])
    x = g.node("Add", [g.node("Gather", [tokens, ids], axis=0), positions])  # [b, l, width]
    mask = g.node("Cast", ["attention_mask"], to=TensorProto.FLOAT)  # [b, l]
    one = g.const("mask.one", np.array(1.0, np.float32))
    # -1e4: far enough below any score that exp() underflows to 0, yet finite, so an all-padding row stays
    # finite too
    negative = g.const("mask.negative", np.array(-1e4, np.float32))
    axes = g.const("mask.axes", np.array([1, 2], np.int64))
    mask_bias = g.node("Unsqueeze", [g.node("Mul", [g.node("Sub", [one, mask]), negative]), axes])
    for layer in range(layers):
        prefix = f"layer{layer}"
        attended = _self_attention(g, x, mask_bias, width, heads, f"{prefix}.attention")
        x = _layer_norm(g, g.node("Add", [x, attended]), width, f"{prefix}.attention_norm")
        hidden = _gelu(g, _linear(g, x, width, 4 * width, f"{prefix}.ffn1"), f"{prefix}.gelu")
        x = _layer_norm(
            g,
            g.node("Add", [x, _linear(g, hidden, 4 * width, width, f"{prefix}.ffn2")]),
            width,
            f"{prefix}.ffn_norm",
        )
    seq_axis = g.const("pool.sequence_axis", np.array([1], np.int64))
    # The masked sum as a per-row MatMul [b, 1, l] x [b, l, width]: ONNX Runtime's ReduceSum over axis 1 sums
    # in an order that depends on the batch size, a MatMul row's does not.
    weights = g.node("Unsqueeze", [mask, seq_axis])  # [b, 1, l]
    total = g.node("Squeeze", [g.node("MatMul", [weights, x]), seq_axis])  # [b, width]
    count = g.node("ReduceSum", [mask, seq_axis], keepdims=1)  # [b, 1], exact: a sum of 0s and 1s
    pooled = g.node("Div", [total, g.node("Max", [count, one])])
    g.gemm(pooled, width, classes, "classifier", output="logits")
    return g.model(
        "transformer_encoder",
        [
            _tensor("input_ids", TensorProto.INT64, [length]),
            _tensor("attention_mask", TensorProto.INT64, [length]),
        ],
        [_tensor("logits", TensorProto.FLOAT, [classes])],
        f"{layers}-layer transformer encoder (width {width}, {heads} heads, vocabulary {vocab}, length "
        f"{length}) with masked mean pooling and {classes} logits.",
    )


# --------------------------------------------------------------------------- repositories

CLASSIFIER_CONFIG = """\
name: "classifier"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [
  {
    name: "input"
    data_type: TYPE_FP32
    dims: [ 16 ]
  }
]
output [
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 4 ]
  }
]
dynamic_batching {
  max_queue_delay_microseconds: 0
}
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""

IMAGE_CLASSIFIER_CONFIG = """\
name: "image_classifier"
platform: "onnxruntime_onnx"
max_batch_size: 32
input [
  {
    name: "input"
    data_type: TYPE_FP32
    dims: [ 3, 64, 64 ]
  }
]
output [
  {
    name: "probabilities"
    data_type: TYPE_FP32
    dims: [ 10 ]
  }
]
dynamic_batching { }
instance_group [
  {
    count: 1
    kind: KIND_CPU
  }
]
"""

# Clients send a uint8 RGB image of any size; the server resizes and normalizes it
# (hotwire.server.preprocess).
IMAGE_CLASSIFIER_PIPELINE = """\
{
  "inputs": {
    "image": {
      "datatype": "UINT8",
      "dims": [-1, -1, 3],
      "feeds": "input",
      "steps": [
        {"op": "resize", "height": 64, "width": 64},
        {"op": "normalize", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
      ]
    }
  }
}
"""


def serialize_model(model: onnx.ModelProto) -> bytes:
    """Deterministic serialisation used for every ``model.onnx`` written by this module."""
    return model.SerializeToString(deterministic=True)


def example_models() -> dict[str, tuple[onnx.ModelProto, str]]:
    """The bundled example models, keyed by model name, with their ``config.pbtxt`` text."""
    return {
        "classifier": (small_classifier(), CLASSIFIER_CONFIG),
        "image_classifier": (image_classifier_nchw(), IMAGE_CLASSIFIER_CONFIG),
    }


def write_model_repository(root: pathlib.Path, models: dict[str, tuple[onnx.ModelProto, str]]) -> None:
    """Write a Triton-layout repository: ``<root>/<name>/config.pbtxt`` and ``<root>/<name>/1/model.onnx``."""
    root = pathlib.Path(root)
    for name, (model, config) in models.items():
        version_dir = root / name / "1"
        version_dir.mkdir(parents=True, exist_ok=True)
        (root / name / "config.pbtxt").write_bytes(config.encode("utf-8"))
        (version_dir / "model.onnx").write_bytes(serialize_model(model))


def write_example_repository(root: pathlib.Path) -> None:
    """Write the bundled example repository (``classifier`` and ``image_classifier``, the latter with its
    preprocessing pipeline in ``preprocess.json``) under ``root``."""
    write_model_repository(pathlib.Path(root), example_models())
    (pathlib.Path(root) / "image_classifier" / "preprocess.json").write_bytes(
        IMAGE_CLASSIFIER_PIPELINE.encode()
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hotwire.bench.models", description="Generate the deterministic ONNX models."
    )
    parser.add_argument(
        "--example-repository",
        type=pathlib.Path,
        metavar="DIR",
        help="write the bundled example repository (Triton layout) into DIR",
    )
    args = parser.parse_args(argv)
    if args.example_repository is None:
        parser.error("nothing to do: pass --example-repository DIR")
    write_example_repository(args.example_repository)
    print(f"wrote example repository to {args.example_repository}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
