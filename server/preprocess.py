"""Preprocessing pipelines declared per model: client-facing inputs mapped onto the ONNX inputs by numba
kernels.

Declared in `<model>/preprocess.json` next to config.pbtxt (or the same JSON in a config parameter
`preprocess`):

    {"inputs": {
        "image": {                                   # the input clients send
            "datatype": "UINT8", "dims": [-1, -1, 3],   # per item (batch dimension excluded); -1: any size
            "feeds": "input",                          # the ONNX input it becomes
            "steps": [
                {"op": "resize", "height": 224, "width": 224},
                {"op": "normalize", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
            ]}}}

Steps, in order. Per request (each request's images may have their own size): `resize {height, width}`
(bilinear, OpenCV INTER_LINEAR convention), `center_crop {height, width}`, `letterbox {height, width,
pad_value}`. Then per batch: `normalize {mean, std, dtype: FP32|FP16, channel_order, model_channel_order}` or
`scale {scale, dtype, ...}` (uint8 HWC -> NCHW); tabular FP32 [F] inputs: `fill_nan {fill}`, `clip {lo, hi}`,
`standardize {mean, std}`, `min_max {lo, hi, clip}`; integer category inputs (dims []):
`one_hot {num_classes}`; token ids INT64 [-1]: `pad_truncate {length, pad_id, truncation_side, padding_side,
mask_feeds}` (mask_feeds: the ONNX input that gets the attention mask).

Clients see the client-facing inputs in ModelMetadata and ModelConfig, and validation applies to them. A
pipeline runs on the instance's thread as part of its batch; requests whose images differ in size batch
together once the per-request steps make them equal. At load the pipeline runs on a synthetic input
(sized so that every step can run on it) and must produce exactly what the ONNX input takes, or the model
fails to load with the reason (other models are not affected).

What a request's image needs is known from the steps: each per-request step gives the image a fixed size, so
only the first one depends on the client's size, and a leading `center_crop {height, width}` needs an image at
least that large (the steps after it run on sizes the load check has seen). `Preprocessor.check` rejects a
smaller image with InvalidInput naming the input and the minimum size, at validation, before the request
queues. A per-request step that still fails at batch time fails that request only: `Preprocessor.prepare`
raises `RequestsFailed`, which says which requests of the batch failed and why, so the batcher can answer them
and run the others.

A kernel module (hotwire.kernels.image, .tabular, .sequence) is imported, and its signatures compiled or
loaded from the kernel cache, only when a loaded pipeline uses one of its ops: numba itself (~57 MiB resident,
~0.3 s) is imported by the first model that declares preprocessing, never by a server whose models declare
none.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from hotwire.server import datatypes
from hotwire.server.errors import HotwireError, InvalidInput, ModelLoadError, RequestsFailed
from hotwire.server.model_config import Signature, TensorSpec

if TYPE_CHECKING:
    from hotwire.server.wire import InferRequest

SIDECAR = "preprocess.json"
PER_REQUEST_OPS = ("resize", "center_crop", "letterbox")
IMAGE_OPS = ("normalize", "scale")
TABULAR_OPS = ("fill_nan", "clip", "standardize", "min_max", "one_hot")
SEQUENCE_OPS = ("pad_truncate",)
KERNEL_MODULES = ("image", "tabular", "sequence")  # under hotwire.kernels

Step = Callable[[np.ndarray], np.ndarray]
SYNTHETIC_SIZE = 37  # the load check's size for a dynamic axis: odd, so resize and crop must cope


@dataclass(frozen=True)
class MinimumImage:
    """The smallest image (height x width) a pipeline's per-request steps can run on, and the step that needs
    it."""

    height: int
    width: int
    step: str  # e.g. "step 0 (center_crop 32x32)"


@dataclass(frozen=True)
class PadTruncate:
    """A token-id pipeline's one stage, `pad_truncate`: each row (of any length) padded or truncated to
    `length`, the batch's rows gathered into one [rows, length] array (and its attention mask, for
    `mask_feeds`)."""

    length: int
    pad_id: int = 0
    truncation_side: str = "right"
    padding_side: str = "right"


@dataclass
class InputPipeline:
    client: TensorSpec  # what clients send (dims exclude the batch dimension)
    feeds: str  # ONNX input produced
    mask_feeds: str | None = None  # pad_truncate's attention mask target
    per_request: list[Step] = field(default_factory=list)  # on each request's [rows, ...] array
    per_batch: list[Step] = field(default_factory=list)  # on the gathered batch
    sized_by_steps: bool = False  # per-request steps give every request the same item shape
    # a sequence pipeline: this stage instead of per-request/per-batch steps
    pad_truncate: PadTruncate | None = None
    # per-request steps: (index, op, h, w)
    geometry: list[tuple[int, str, int, int]] = field(default_factory=list)
    kernel_modules: set[str] = field(default_factory=set)  # of KERNEL_MODULES, what the steps call

    @property
    def minimum_image(self) -> MinimumImage | None:
        """What the client's images need, or None when any non-empty image will do.

        Every per-request step (resize, letterbox, center_crop) outputs a fixed height x width, so only the
        first one sees the client's size: a leading center_crop needs the image at least as large as the crop.
        The steps after it run on fixed sizes, which the load check has run them on."""
        if not self.geometry or self.geometry[0][1] != "center_crop":
            return None
        index, op, height, width = self.geometry[0]
        return MinimumImage(height, width, f"step {index} ({op} {height}x{width})")

    def check(self, shape: Sequence[int], batched: bool) -> None:
        """InvalidInput when a request's tensor of this shape (batch dimension first when `batched`) is too
        small for the per-request steps; the shape only, so the outcome can be cached with the request's
        plan."""
        need = self.minimum_image
        item = tuple(shape[1:] if batched else shape)
        if need is None or len(item) < 3:  # rank mismatches are the signature's to report
            return
        height, width = item[-3], item[-2]
        if height < need.height or width < need.width:
            raise InvalidInput(
                f"input '{self.client.name}': shape {list(shape)} holds {height}x{width} images, smaller "
                "than its "
                f"preprocessing pipeline takes: expected images of at least {need.height}x{need.width} "
                f"(height x width) for {need.step}"
            )

    def run(self, arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
        """One batch: arrays are the requests' client tensors [rows, ...]. Runs on an instance thread."""
        parts, failures = self.run_per_request(arrays)
        if failures:
            raise failures[min(failures)]
        return self.run_per_batch(parts)

    def run_per_request(self, arrays: list[np.ndarray]) -> tuple[list[np.ndarray], dict[int, Exception]]:
        """The per-request steps on each request's array on its own: (results, {index: exception} of those
        that failed; their result is the input, unused)."""
        if not self.per_request:
            return arrays, {}
        parts: list[np.ndarray] = []
        failures: dict[int, Exception] = {}
        for index, part in enumerate(arrays):
            try:
                for step in self.per_request:
                    part = step(part)
            except Exception as exc:  # noqa: BLE001 - whatever a kernel raises fails this request only
                failures[index] = exc
                part = arrays[index]
            parts.append(part)
        return parts, failures

    def run_per_batch(self, parts: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The per-batch steps on the requests' per-request results, gathered in order."""
        if self.pad_truncate is not None:
            return self._pad_truncate(self.pad_truncate, parts)
        batch = parts[0] if len(parts) == 1 else np.concatenate(parts)
        for step in self.per_batch:
            batch = step(batch)
        return {self.feeds: batch}

    def _pad_truncate(self, stage: PadTruncate, parts: list[np.ndarray]) -> dict[str, np.ndarray]:
        rows = [row for part in parts for row in part]
        ids, mask = kernels("sequence").pad_truncate(
            rows,
            stage.length,
            pad_id=stage.pad_id,
            truncation_side=stage.truncation_side,
            padding_side=stage.padding_side,
        )
        result = {self.feeds: ids}
        if self.mask_feeds:
            result[self.mask_feeds] = mask
        return result


def _request_error(name: str, exc: Exception) -> HotwireError:
    if isinstance(exc, HotwireError):
        return exc
    message = f"input '{name}': preprocessing failed: {exc}"
    return InvalidInput(message) if isinstance(exc, (ValueError, TypeError)) else HotwireError(message)


@dataclass
class Preprocessor:
    pipelines: dict[str, InputPipeline]  # by client input name
    batched: bool = True  # client tensors carry the batch dimension first

    def check(self, request: InferRequest) -> None:
        """Request validation, before the request queues: InvalidInput naming the input and the minimum size
        when an image is smaller than its pipeline's steps need. Depends on the request's header
        (names and shapes) only."""
        for tensor in request.inputs:
            pipeline = self.pipelines.get(tensor.name)
            if pipeline is not None:
                pipeline.check(tensor.shape, self.batched)

    def prepare(
        self, parts: list[dict[str, np.ndarray]], gather: Callable[[list[dict[str, np.ndarray]]], dict]
    ) -> dict[str, np.ndarray]:
        """The model's feeds for a batch of requests: pipelines for their inputs, `gather` for the rest.

        Raises RequestsFailed, before anything is gathered, when per-request steps fail for some of the
        requests: those fail alone (InvalidInput for a kernel's ValueError/TypeError, naming the input), and
        the batcher can prepare the others again without them."""
        prepared: dict[str, list[np.ndarray]] = {}
        failures: dict[int, HotwireError] = {}
        for name, pipeline in self.pipelines.items():
            if name in parts[0]:
                prepared[name], failed = pipeline.run_per_request([part[name] for part in parts])
                for index, exc in failed.items():
                    failures.setdefault(index, _request_error(name, exc))
        if failures:
            raise RequestsFailed(failures, len(parts))
        feeds: dict[str, np.ndarray] = {}
        plain = [{k: v for k, v in part.items() if k not in self.pipelines} for part in parts]
        if plain and plain[0]:
            feeds.update(plain[0] if len(plain) == 1 else gather(plain))
        for name, arrays in prepared.items():
            feeds.update(self.pipelines[name].run_per_batch(arrays))
        return feeds

    def fed_inputs(self) -> set[str]:
        return {t for p in self.pipelines.values() for t in (p.feeds, p.mask_feeds) if t is not None}


def declaration(parameter: str | None, model_dir: Path) -> dict[str, Any] | None:
    """The model's pipeline declaration: the `preprocess` config parameter's JSON (ModelParameters.preprocess)
    when it has one, else preprocess.json in `model_dir`; None when neither."""
    text = None
    source = ""
    if parameter is not None:
        text, source = parameter, "config parameter 'preprocess'"
    elif (model_dir / SIDECAR).is_file():
        text, source = (model_dir / SIDECAR).read_text(), str(model_dir / SIDECAR)
    if text is None:
        return None
    try:
        declared = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelLoadError(f"{source}: not valid JSON: {exc}") from None
    if (
        not isinstance(declared, dict)
        or not isinstance(declared.get("inputs"), dict)
        or not declared["inputs"]
    ):
        raise ModelLoadError(f'{source}: expected {{"inputs": {{<client input>: {{...}}}}}}')
    declared["_source"] = source
    return declared


def build(
    declared: dict[str, Any], signature: Signature, gpu: bool = False
) -> tuple[Preprocessor, Signature]:
    """The preprocessor and the client-facing signature; checks every pipeline end to end on a synthetic
    batch.

    `gpu`: the model runs on one CUDA device and numba.cuda works there: normalize/scale run as the GPU twins
    and hand ONNX Runtime a device array (runner binds it without a host copy)."""
    source = declared.pop("_source", "preprocess declaration")
    pipelines: dict[str, InputPipeline] = {}
    fed: set[str] = set()
    for name, spec in declared["inputs"].items():
        where = f"{source}: input '{name}'"
        try:
            pipeline = _pipeline(name, spec, signature, where, gpu)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{where}: {exc}") from None
        for target in (pipeline.feeds, pipeline.mask_feeds):
            if target is not None and target in fed:
                raise ModelLoadError(f"{where}: ONNX input '{target}' is fed by two pipelines")
            if target is not None:
                fed.add(target)
        pipelines[name] = pipeline
    for pipeline in pipelines.values():
        if pipeline.sized_by_steps:  # requests of any size batch together: the steps make them equal
            pipeline.client = replace(pipeline.client, resized=True)
    inputs = [s for s in signature.inputs if s.name not in fed] + [p.client for p in pipelines.values()]
    client_signature = Signature(tuple(inputs), signature.outputs, signature.max_batch_size)
    preprocessor = Preprocessor(pipelines, signature.batched)
    # compile or load from the cache now, so neither the check below nor any request compiles
    warm(set().union(*(p.kernel_modules for p in pipelines.values())))
    for name, pipeline in pipelines.items():
        _check_end_to_end(pipeline, signature, f"{source}: input '{name}'")
    return preprocessor, client_signature


def _pipeline(
    name: str, spec: dict[str, Any], signature: Signature, where: str, gpu: bool = False
) -> InputPipeline:
    unknown = set(spec) - {"datatype", "dims", "feeds", "steps"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)}")
    dtype = datatypes.BY_NAME.get(str(spec.get("datatype", "")))
    if dtype is None:
        raise ValueError(f"datatype '{spec.get('datatype')}' is not one of {list(datatypes.BY_NAME)}")
    dims = tuple(int(d) for d in spec.get("dims", ()))
    feeds = str(spec["feeds"])
    if signature.input(feeds) is None:
        raise ValueError(
            f"feeds '{feeds}', which is not an input of the model ({[s.name for s in signature.inputs]})"
        )
    steps = spec.get("steps")
    if not isinstance(steps, list) or not steps:
        raise ValueError("'steps' must be a non-empty list")
    pipeline = InputPipeline(TensorSpec(name, dtype, dims, dims), feeds)
    for index, step in enumerate(steps):
        op = step.get("op") if isinstance(step, dict) else None
        args = {k: v for k, v in step.items() if k != "op"} if isinstance(step, dict) else {}
        try:
            _add_step(pipeline, str(op), args, gpu, index)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"step {index} ({op}): {exc}") from None
    return pipeline


def _add_step(
    pipeline: InputPipeline, op: str, args: dict[str, Any], gpu: bool = False, index: int = 0
) -> None:
    if pipeline.pad_truncate is not None:
        raise ValueError("'pad_truncate' must be the only step")
    if op in PER_REQUEST_OPS:
        image_kernels: Any = kernels("image")
        pipeline.kernel_modules.add("image")
        if pipeline.per_batch:
            raise ValueError(f"'{op}' must come before the batch steps")
        height, width = int(args.pop("height")), int(args.pop("width"))
        pipeline.geometry.append((index, op, height, width))
        if op == "resize":
            pipeline.per_request.append(lambda x: image_kernels.resize_bilinear(x, height, width))
        elif op == "center_crop":
            pipeline.per_request.append(lambda x: image_kernels.center_crop(x, height, width))
        else:
            pad = args.pop("pad_value", 114)
            pipeline.per_request.append(lambda x: image_kernels.letterbox(x, height, width, pad)[0])
        pipeline.sized_by_steps = op != "center_crop" or pipeline.sized_by_steps
    elif op in IMAGE_OPS:
        out_dtype = {"FP32": np.float32, "FP16": np.float16}[str(args.pop("dtype", "FP32"))]
        order = str(args.pop("channel_order", "RGB"))
        model_order = str(args.pop("model_channel_order", order))
        pipeline.kernel_modules.add("image")
        chosen: Any = kernels("cuda_image" if gpu else "image")
        if op == "normalize":
            mean, std = args.pop("mean"), args.pop("std")
            step: Step = lambda x: chosen.normalize_hwc_to_nchw(  # noqa: E731
                x, mean, std, out_dtype=out_dtype, channel_order=order, model_channel_order=model_order
            )
        else:
            scale = args.pop("scale")
            step = lambda x: chosen.scale_hwc_to_nchw(  # noqa: E731
                x, scale, out_dtype=out_dtype, channel_order=order, model_channel_order=model_order
            )
        pipeline.per_batch.append(_synchronized(step) if gpu else step)
    elif op in TABULAR_OPS:
        tabular_kernels: Any = kernels("tabular")
        pipeline.kernel_modules.add("tabular")
        if op == "fill_nan":
            fill = args.pop("fill")
            pipeline.per_batch.append(lambda x: tabular_kernels.fill_nan(x, fill))
        elif op == "clip":
            lo, hi = args.pop("lo"), args.pop("hi")
            pipeline.per_batch.append(lambda x: tabular_kernels.clip(x, lo, hi))
        elif op == "standardize":
            mean, std = args.pop("mean"), args.pop("std")
            pipeline.per_batch.append(lambda x: tabular_kernels.standardize(x, mean, std))
        elif op == "min_max":
            lo, hi, clip = args.pop("lo"), args.pop("hi"), bool(args.pop("clip", False))
            pipeline.per_batch.append(lambda x: tabular_kernels.min_max(x, lo, hi, clip=clip))
        else:
            classes = int(args.pop("num_classes"))
            pipeline.per_batch.append(lambda x: tabular_kernels.one_hot(x.reshape(-1), classes))
    elif op in SEQUENCE_OPS:
        if pipeline.per_request or pipeline.per_batch:
            raise ValueError("'pad_truncate' must be the only step")
        pipeline.kernel_modules.add("sequence")
        pipeline.mask_feeds = args.pop("mask_feeds", None)
        pipeline.pad_truncate = PadTruncate(
            int(args.pop("length")),
            int(args.pop("pad_id", 0)),
            str(args.pop("truncation_side", "right")),
            str(args.pop("padding_side", "right")),
        )
        pipeline.sized_by_steps = True
    else:
        raise ValueError(
            f"unknown op '{op}'; known: {PER_REQUEST_OPS + IMAGE_OPS + TABULAR_OPS + SEQUENCE_OPS}"
        )
    if args:
        raise ValueError(f"unknown arguments {sorted(args)}")


def _synchronized(step: Step) -> Step:
    """A GPU step whose result ONNX Runtime reads on its own stream: wait for the kernel to finish first."""

    def run(batch: np.ndarray) -> np.ndarray:
        from numba import cuda

        result = step(batch)
        cuda.synchronize()
        return result

    return run


def _synthetic(spec: TensorSpec, rows: int, need: MinimumImage | None = None) -> np.ndarray:
    """A synthetic request: dynamic axes SYNTHETIC_SIZE (odd: resize and crop must cope), the image axes
    (height, width: the two before the channels) at least what the pipeline's first step needs, still odd."""
    dims = [SYNTHETIC_SIZE if d < 0 else d for d in spec.dims]
    if need is not None and len(dims) >= 3:
        for axis, least in ((len(dims) - 3, need.height), (len(dims) - 2, need.width)):
            if spec.dims[axis] < 0:
                dims[axis] = max(SYNTHETIC_SIZE, least | 1)
    if spec.datatype.name == "BYTES":
        return np.full((rows, *dims), "", dtype=object)
    return np.ones((rows, *dims), dtype=spec.datatype.numpy)


def _check_end_to_end(pipeline: InputPipeline, signature: Signature, where: str) -> None:
    """Run the pipeline on two synthetic requests; what it produces must be what the ONNX input takes."""
    try:
        need = pipeline.minimum_image
        produced = pipeline.run([_synthetic(pipeline.client, 2, need), _synthetic(pipeline.client, 1, need)])
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelLoadError(
            f"{where}: the pipeline fails on a {pipeline.client.datatype.name} input of dims "
            f"{list(pipeline.client.dims)}: {exc}"
        ) from None
    for target, array in produced.items():
        spec = signature.input(target)
        if spec is None:
            raise ModelLoadError(f"{where}: produces '{target}', which is not an input of the model")
        expected_dtype = spec.datatype.numpy
        array = array.copy_to_host() if hasattr(array, "copy_to_host") else array  # a GPU step's device array
        if array.dtype != expected_dtype:
            raise ModelLoadError(
                f"{where}: produces {array.dtype} for '{target}', the model takes {spec.datatype.name}"
            )
        item = array.shape[1:] if signature.batched else array.shape
        model_dims = spec.model_dims
        if len(item) != len(model_dims) or any(m >= 0 and m != i for m, i in zip(model_dims, item)):
            raise ModelLoadError(
                f"{where}: produces '{target}' of item shape {list(item)}, the model takes {list(model_dims)}"
            )


def kernels(module: str) -> ModuleType:
    """hotwire.kernels.<module>, imported on first use (with numba)."""
    return importlib.import_module(f"hotwire.kernels.{module}")


def warm(modules: Iterable[str]) -> None:
    """Compile (or load from numba's cache) every signature of these kernel modules (of KERNEL_MODULES): at
    model load, never on a request."""
    for module in sorted(modules):
        kernels(module).warm()
