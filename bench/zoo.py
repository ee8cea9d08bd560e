"""The benchmark model zoo: a Triton-layout repository of deterministic ONNX models to serve and time.

Models (weights from fixed seeds, see :mod:`hotwire.bench.models`):

* ``classifier`` -- the bundled example (16->32->4 MLP), config and bytes as in ``server/example_repository``.
* ``wide_mlp`` -- 512->2048->2048->10 FP32 MLP, ~5.3 M parameters: compute-bound dense layers.
* ``convnet`` -- small CNN on FP32 NCHW [3, 224, 224] images, 1000 logits.
* ``convnet_uint8`` -- the same convnet behind a preprocessing pipeline: clients send UINT8 HWC images of
  any size, the server resizes them to 224x224 (bilinear) and normalizes them (ImageNet mean/std) into the
  convnet's FP32 NCHW input.
* ``transformer`` -- 2-layer transformer encoder (width 64, 2 heads, vocabulary 1000) on 128 token ids plus
  their attention mask: clients send INT64 token ids of any length, the ``pad_truncate`` step pads or
  truncates them to 128 and produces the mask; padding is masked out, so a sequence's logits do not depend
  on what it is batched with.

Configs are tuned for latency benchmarks on a small CPU machine, the classifier excepted (it keeps the
bundled example's config, so that results compare with the example's):

* one ``KIND_CPU`` instance with ``intra_op_thread_count`` 1: on a 2-core machine ONNX Runtime gets one
  core and the event loop (gRPC, decoding, batching, preprocessing hand-off) the other, instead of both
  fighting over the same cores; more threads mostly buy jitter at these sizes;
* ``dynamic_batching`` with ``max_queue_delay_microseconds: 100``: under a tenth of a batch-1 inference of
  the wide MLP, convnet or transformer (1-6 ms each on one core), so a lone request barely waits, while
  requests that arrive together still share a batch;
* a ``max_batch_size`` that keeps the largest batch within tens of milliseconds on one core (8 for the
  224x224 convnets, 16 for the transformer, 32 for the wide MLP), which also bounds the load-time warm-up
  (hotwire runs batch 1 and ``max_batch_size`` five times each).

Write it with::

    python -m hotwire.bench.zoo --out DIR [--model NAME ...]

:func:`write_zoo` writes into a missing or empty directory, or over a zoo written before: a directory whose
entries are all zoo models laid out as this module writes them (a subset of their files, so an interrupted
write counts). Anything else in it (another model, a second version, a stray file) makes it refuse with
:class:`FileExistsError` rather than mix a zoo into someone's repository or overwrite their files. Models not
named are left as they are.

:func:`floor_inputs` gives a batch of inputs for the ONNX model itself (after preprocessing: the padded ids
and mask, the normalized NCHW image), so a benchmark can time in-process ONNX Runtime as the floor a server
adds its costs to.

Like :mod:`hotwire.bench.models` this needs ``onnx``: nothing under ``hotwire.server`` may import it.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from hotwire.bench import models

__all__ = [
    "CONVNET_UINT8_PIPELINE",
    "IMAGE_MEAN",
    "IMAGE_SIZE",
    "IMAGE_STD",
    "PAD_ID",
    "QUEUE_DELAY_US",
    "SEQUENCE_LENGTH",
    "TRANSFORMER_PIPELINE",
    "VOCABULARY",
    "ZOO",
    "ZooModel",
    "floor_inputs",
    "main",
    "write_zoo",
]

QUEUE_DELAY_US = 100
IMAGE_SIZE = 224
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)
SEQUENCE_LENGTH = 128
VOCABULARY = 1000
PAD_ID = 0

CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "1/model.onnx"
PIPELINE_FILE = "preprocess.json"

Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class ZooModel:
    """One model of the zoo: how to build its graph, its ``config.pbtxt`` text, its ``preprocess.json`` text
    (None: clients send what the graph takes), and how to make a batch of the graph's own inputs."""

    name: str
    builder: Callable[[], onnx.ModelProto]
    config: str
    pipeline: str | None
    description: str
    make_inputs: Callable[[int, np.random.Generator], Inputs]

    def model_bytes(self) -> bytes:
        return models.serialize_model(self.builder())

    def files(self) -> tuple[str, ...]:
        """The paths write_zoo writes under ``<out>/<name>/``."""
        return (CONFIG_FILE, MODEL_FILE) + ((PIPELINE_FILE,) if self.pipeline is not None else ())


# --------------------------------------------------------------------------- configs and pipelines


def _tensors(tensors: Sequence[tuple[str, str, Sequence[int]]]) -> str:
    entries = ",\n".join(
        f'  {{\n    name: "{name}"\n    data_type: {dtype}\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'
        for name, dtype, dims in tensors
    )
    return f"[\n{entries}\n]"


def _config(
    name: str,
    max_batch_size: int,
    inputs: Sequence[tuple[str, str, Sequence[int]]],
    outputs: Sequence[tuple[str, str, Sequence[int]]],
) -> str:
    """A latency-benchmark config (module docstring): the ONNX graph's inputs and outputs, one CPU instance
    with one ORT thread, dynamic batching with a QUEUE_DELAY_US delay."""
    return (
        f'name: "{name}"\n'
        'platform: "onnxruntime_onnx"\n'
        f"max_batch_size: {max_batch_size}\n"
        f"input {_tensors(inputs)}\n"
        f"output {_tensors(outputs)}\n"
        "dynamic_batching {\n"
        f"  max_queue_delay_microseconds: {QUEUE_DELAY_US}\n"
        "}\n"
        "instance_group [\n  {\n    count: 1\n    kind: KIND_CPU\n  }\n]\n"
        'parameters { key: "intra_op_thread_count" value: { string_value: "1" } }\n'
    )


# Clients send a UINT8 RGB image of any size; the server resizes it and normalizes it into `input`.
CONVNET_UINT8_PIPELINE = f"""\
{{
  "inputs": {{
    "image": {{
      "datatype": "UINT8",
      "dims": [-1, -1, 3],
      "feeds": "input",
      "steps": [
        {{"op": "resize", "height": {IMAGE_SIZE}, "width": {IMAGE_SIZE}}},
        {{"op": "normalize", "mean": {json.dumps(IMAGE_MEAN)}, "std": {json.dumps(IMAGE_STD)}}}
      ]
    }}
  }}
}}
"""

# Clients send INT64 token ids of any length; the server pads or truncates them to SEQUENCE_LENGTH into
# `input_ids` and writes the attention mask (1 on tokens, 0 on padding) into `attention_mask`.
TRANSFORMER_PIPELINE = f"""\
{{
  "inputs": {{
    "tokens": {{
      "datatype": "INT64",
      "dims": [-1],
      "feeds": "input_ids",
      "steps": [
        {{
          "op": "pad_truncate",
          "length": {SEQUENCE_LENGTH},
          "pad_id": {PAD_ID},
          "mask_feeds": "attention_mask"
        }}
      ]
    }}
  }}
}}
"""

_IMAGE = ("input", "TYPE_FP32", (3, IMAGE_SIZE, IMAGE_SIZE))
_LOGITS_1000 = ("logits", "TYPE_FP32", (1000,))
_TRANSFORMER_CLASSES = 4


# --------------------------------------------------------------------------- floor inputs


def _features(width: int) -> Callable[[int, np.random.Generator], Inputs]:
    def make(batch: int, rng: np.random.Generator) -> Inputs:
        return {"input": rng.standard_normal((batch, width), dtype=np.float32)}

    return make


def _images(batch: int, rng: np.random.Generator) -> Inputs:
    return {"input": rng.standard_normal((batch, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)}


def _normalized_images(batch: int, rng: np.random.Generator) -> Inputs:
    """What convnet_uint8's pipeline hands the graph: uint8 pixels as (x / 255 - mean) / std, NCHW."""
    pixels = rng.integers(0, 256, (batch, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    mean = np.asarray(IMAGE_MEAN, np.float64).reshape(1, 3, 1, 1)
    std = np.asarray(IMAGE_STD, np.float64).reshape(1, 3, 1, 1)
    return {"input": ((pixels / 255.0 - mean) / std).astype(np.float32)}


def _token_batch(batch: int, rng: np.random.Generator) -> Inputs:
    """What the transformer's pad_truncate step hands the graph: rows of 1..SEQUENCE_LENGTH random tokens,
    padded with PAD_ID, and their mask. The cost does not depend on the lengths (every row is computed over
    all SEQUENCE_LENGTH positions)."""
    lengths = rng.integers(1, SEQUENCE_LENGTH + 1, batch)
    mask = (np.arange(SEQUENCE_LENGTH)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(0, VOCABULARY, (batch, SEQUENCE_LENGTH), dtype=np.int64)
    return {"input_ids": np.where(mask == 1, ids, PAD_ID), "attention_mask": mask}


# --------------------------------------------------------------------------- the zoo


def _transformer() -> onnx.ModelProto:
    return models.transformer_encoder(vocab=VOCABULARY, length=SEQUENCE_LENGTH, classes=_TRANSFORMER_CLASSES)


ZOO: dict[str, ZooModel] = {
    zoo_model.name: zoo_model
    for zoo_model in (
        ZooModel(
            "classifier",
            models.small_classifier,
            models.CLASSIFIER_CONFIG,
            None,
            "the bundled example: 16->32->4 FP32 MLP with softmax (its example config)",
            _features(16),
        ),
        ZooModel(
            "wide_mlp",
            models.wide_mlp,
            _config("wide_mlp", 32, [("input", "TYPE_FP32", (512,))], [("logits", "TYPE_FP32", (10,))]),
            None,
            "512->2048->2048->10 FP32 MLP, ~5.3 M parameters",
            _features(512),
        ),
        ZooModel(
            "convnet",
            models.convnet,
            _config("convnet", 8, [_IMAGE], [_LOGITS_1000]),
            None,
            "small CNN on FP32 NCHW 3x224x224 images, 1000 logits",
            _images,
        ),
        ZooModel(
            "convnet_uint8",
            models.convnet,
            _config("convnet_uint8", 8, [_IMAGE], [_LOGITS_1000]),
            CONVNET_UINT8_PIPELINE,
            "the convnet behind a resize + normalize pipeline: clients send UINT8 HWC images of any size",
            _normalized_images,
        ),
        ZooModel(
            "transformer",
            _transformer,
            _config(
                "transformer",
                16,
                [
                    ("input_ids", "TYPE_INT64", (SEQUENCE_LENGTH,)),
                    ("attention_mask", "TYPE_INT64", (SEQUENCE_LENGTH,)),
                ],
                [("logits", "TYPE_FP32", (_TRANSFORMER_CLASSES,))],
            ),
            TRANSFORMER_PIPELINE,
            f"2-layer transformer encoder behind pad_truncate to {SEQUENCE_LENGTH}: clients send INT64 token "
            "ids of any length",
            _token_batch,
        ),
    )
}


def floor_inputs(name: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A batch of inputs for zoo model `name`'s ONNX graph itself (the shapes after preprocessing), to time
    in-process ONNX Runtime on."""
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    return _model(name).make_inputs(batch, rng)


def _model(name: str) -> ZooModel:
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"no zoo model '{name}'; the zoo has {list(ZOO)}") from None


# --------------------------------------------------------------------------- writing


def _foreign_entry(out: Path) -> Path | None:
    """The first thing in `out` that write_zoo did not (or could not have) put there; None when `out` holds
    zoo models only, each laid out as write_zoo lays it out (possibly partly)."""
    for entry in sorted(out.iterdir()):
        model = ZOO.get(entry.name)
        if model is None or entry.is_symlink() or not entry.is_dir():
            return entry
        allowed = set(model.files()) | {str(Path(MODEL_FILE).parent)}
        for path in sorted(entry.rglob("*")):
            relative = path.relative_to(entry).as_posix()
            if relative not in allowed or path.is_symlink():
                return path
    return None


def write_zoo(out: Path, names: Sequence[str] | None = None) -> list[str]:
    """Write the zoo models `names` (default: all, in ZOO's order; duplicates once) into the Triton-layout
    repository `out`: ``<name>/config.pbtxt``, ``<name>/1/model.onnx`` and, for a model with a pipeline,
    ``<name>/preprocess.json``. Returns the names written.

    `out` must be missing, empty, or a zoo written before (see the module docstring); otherwise
    FileExistsError naming what is in the way, before anything is written. KeyError for an unknown name."""
    out = Path(out)
    selected = [_model(name) for name in dict.fromkeys(ZOO if names is None else names)]
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.is_dir():
        foreign = _foreign_entry(out)
        if foreign is not None:
            raise FileExistsError(
                f"{out} is neither empty nor a model zoo ({foreign} is not part of one): refusing to write "
                "into it"
            )
    for model in selected:
        model_dir = out / model.name
        (model_dir / MODEL_FILE).parent.mkdir(parents=True, exist_ok=True)
        (model_dir / CONFIG_FILE).write_bytes(model.config.encode())
        (model_dir / MODEL_FILE).write_bytes(model.model_bytes())
        if model.pipeline is not None:
            (model_dir / PIPELINE_FILE).write_bytes(model.pipeline.encode())
    return [model.name for model in selected]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hotwire.bench.zoo",
        description="Write the benchmark model zoo (a Triton-layout model repository).",
        epilog="models: " + "; ".join(f"{m.name}: {m.description}" for m in ZOO.values()),
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="the repository to write (missing, empty or a zoo)"
    )
    parser.add_argument(
        "--model",
        action="append",
        choices=list(ZOO),
        metavar="NAME",
        help=f"a model to write (repeatable; default: all of {', '.join(ZOO)})",
    )
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    args = parser.parse_args(argv)
    if args.list:
        for model in ZOO.values():
            print(f"{model.name}: {model.description}")
        return 0
    if args.out is None:
        parser.error("--out DIR is required")
    try:
        written = write_zoo(args.out, args.model)
    except FileExistsError as exc:
        parser.error(str(exc))
    print(f"wrote {', '.join(written)} to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
