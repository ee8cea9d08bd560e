"""Model configuration: read config.pbtxt, complete it from the ONNX graph, derive the frozen settings.

The `ModelConfig` protobuf (Triton's format) stays the source of truth: it is what the ModelConfig RPC
returns. Everything the server acts on is derived from it here, once per load, into frozen dataclasses.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import text_format
from google.protobuf.message import Message

from hotwire.proto import model_config_pb2 as mc
from hotwire.server import datatypes
from hotwire.server.config import DEFAULT_MAX_BATCH_SIZE, parse_bool
from hotwire.server.errors import ConfigError, InvalidInput, ModelLoadError
from hotwire.server.traffic import GuardPolicy, TrafficPolicy

ONNX_PLATFORM = "onnxruntime_onnx"
ONNX_BACKEND = "onnxruntime"
DEFAULT_MODEL_FILENAME = "model.onnx"

_MAX_BATCH_SIZE_KEY = re.compile(r"^\s*max_batch_size\s*:", re.MULTILINE)

log = logging.getLogger(__name__)

# The ModelConfig fields hotwire acts on: True for a field honoured whole, a dict for a message some of whose
# fields are. Anything else a config sets is ignored, and said so (ignored_fields); sequence_batching and
# ensemble_scheduling are refused instead (complete).
_HONOURED: dict[str, Any] = {
    "name": True,
    "platform": True,
    "backend": True,
    "version_policy": True,
    "max_batch_size": True,
    "input": {
        "name": True,
        "data_type": True,
        "dims": True,
        "reshape": True,
        "allow_ragged_batch": True,
        "optional": True,
    },
    "output": {"name": True, "data_type": True, "dims": True, "reshape": True},
    "optimization": {
        "graph": True,
        "cuda": {"graphs": True, "graph_spec": {"batch_size": True}},
        "execution_accelerators": {"gpu_execution_accelerator": True},
    },
    "dynamic_batching": True,
    "sequence_batching": True,
    "ensemble_scheduling": True,
    "instance_group": {"name": True, "kind": True, "count": True, "gpus": True},
    "default_model_filename": True,
    "parameters": True,
    "model_warmup": True,
}
_warned: set[tuple[str, bytes]] = set()  # (model, config) warned about: poll mode rereads every config


def ignored_fields(config: mc.ModelConfig) -> list[str]:
    """The fields `config` sets that hotwire does not act on, as paths (`instance_group[0].rate_limiter`)."""
    found: list[str] = []

    def walk(message: Any, honoured: dict[str, Any], prefix: str) -> None:
        for descriptor, value in message.ListFields():
            path = prefix + descriptor.name
            rule = honoured.get(descriptor.name)
            if rule is None:
                found.append(path)
            elif isinstance(rule, dict):
                repeated = not isinstance(value, Message)  # a repeated field's container
                for i, item in enumerate(value if repeated else [value]):
                    walk(item, rule, f"{path}[{i}]." if repeated else f"{path}.")

    walk(config, _HONOURED, "")
    return found


def _warn_ignored(config: mc.ModelConfig, model_name: str, path: str) -> None:
    key = (model_name, config.SerializeToString(deterministic=True))
    if key in _warned:
        return
    _warned.add(key)
    for name in ignored_fields(config):
        log.warning(
            "model %s: %s sets '%s', which hotwire does not support: it is ignored",
            model_name,
            path,
            name,
            extra={"event": "config_field_ignored", "model": model_name, "field": name},
        )


def read_config(path: Path, model_name: str) -> tuple[mc.ModelConfig, bool]:
    """Parse `<model>/config.pbtxt` (absent: an empty config to complete). Returns
    (config, max_batch_size given)."""
    config = mc.ModelConfig()
    text = ""
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
        except OSError as exc:  # e.g. a directory named config.pbtxt: this model fails, not the server
            raise ConfigError(f"{path}: cannot be read: {exc.strerror or exc}") from None
        try:
            text_format.Parse(text, config)
        except text_format.ParseError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    without_comments = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return _checked(config, model_name, str(path)), bool(_MAX_BATCH_SIZE_KEY.search(without_comments))


def override_config(config: mc.ModelConfig, model_name: str) -> tuple[mc.ModelConfig, bool]:
    """A config given with RepositoryModelLoad's `config` parameter (JSON): its max_batch_size counts as
    given."""
    copy = mc.ModelConfig()
    copy.CopyFrom(config)
    return _checked(copy, model_name, "parameter 'config'"), True


def _checked(config: mc.ModelConfig, model_name: str, path: str) -> mc.ModelConfig:
    if config.name and config.name != model_name:
        raise ConfigError(f"{path}: name '{config.name}' does not match the model directory '{model_name}'")
    config.name = model_name
    if config.platform and config.platform != ONNX_PLATFORM:
        raise ConfigError(
            f"{path}: platform '{config.platform}' is not served; hotwire serves '{ONNX_PLATFORM}'"
        )
    if config.backend and config.backend != ONNX_BACKEND:
        raise ConfigError(
            f"{path}: backend '{config.backend}' is not served; hotwire serves '{ONNX_BACKEND}'"
        )
    config.platform = ONNX_PLATFORM
    config.backend = ONNX_BACKEND
    if not config.default_model_filename:
        config.default_model_filename = DEFAULT_MODEL_FILENAME
    _warn_ignored(config, model_name, path)
    return config


# ------------------------------------------------------------------------------------------------------------
# signature


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: datatypes.Datatype
    dims: tuple[int, ...]  # per request item, batch dimension excluded; -1 = any size
    model_dims: tuple[int, ...]  # the ONNX tensor's dims (batch excluded): differs from dims under `reshape`
    optional: bool = False
    ragged: bool = False  # allow_ragged_batch: batches with other shapes of this input, padded
    resized: bool = False  # a preprocessing pipeline makes every request's shape equal: any shapes batch


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int  # 0: the model takes no batch dimension

    @property
    def batched(self) -> bool:
        return self.max_batch_size > 0

    def full_shape(self, spec: TensorSpec) -> list[int]:
        """The shape clients see in ModelMetadata: batch dimension first (-1) when the model batches."""
        return ([-1] if self.batched else []) + list(spec.dims)

    def input(self, name: str) -> TensorSpec | None:
        return next((s for s in self.inputs if s.name == name), None)

    def output(self, name: str) -> TensorSpec | None:
        return next((s for s in self.outputs if s.name == name), None)


@dataclass(frozen=True)
class GraphTensor:
    """A tensor as the ONNX graph declares it (onnxruntime NodeArg): dims None for symbolic."""

    name: str
    onnx_type: str
    shape: tuple[int | None, ...]


def graph_tensors(node_args: Sequence[Any]) -> list[GraphTensor]:
    return [
        GraphTensor(
            arg.name, arg.type, tuple(d if isinstance(d, int) and d >= 0 else None for d in arg.shape)
        )
        for arg in node_args
    ]


def complete(
    config: mc.ModelConfig,
    max_batch_size_given: bool,
    graph_inputs: list[GraphTensor],
    graph_outputs: list[GraphTensor],
    default_max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
) -> tuple[mc.ModelConfig, Signature]:
    """Fill what config.pbtxt leaves out from the ONNX graph, check the rest agrees with it, derive the
    signature.

    Raises ModelLoadError naming the config field that disagrees with the model.
    """
    config = _copy(config)
    for unsupported in ("sequence_batching", "ensemble_scheduling"):
        if config.HasField(unsupported):
            # Loading such a model as a stateless one would fail every request on its missing control inputs.
            raise ModelLoadError(
                f"{unsupported} is not supported by hotwire (stateless dynamic batching only)"
            )
    everything = graph_inputs + graph_outputs
    first_dims_dynamic = bool(everything) and all(t.shape and t.shape[0] is None for t in everything)
    if not max_batch_size_given:
        config.max_batch_size = default_max_batch_size if first_dims_dynamic else 0
        if config.max_batch_size and not config.HasField("dynamic_batching"):
            config.dynamic_batching.SetInParent()
    if config.max_batch_size < 0:
        raise ModelLoadError(f"max_batch_size must be >= 0, got {config.max_batch_size}")
    batched = config.max_batch_size > 0
    if batched:
        fixed = [t.name for t in everything if not t.shape or t.shape[0] is not None]
        if fixed:
            raise ModelLoadError(
                f"max_batch_size is {config.max_batch_size} but the model's tensors {fixed} have no dynamic "
                "first "
                "(batch) dimension; set max_batch_size: 0"
            )
    inputs = _complete_tensors("input", config.input, graph_inputs, batched)
    outputs = _complete_tensors("output", config.output, graph_outputs, batched)
    if not config.instance_group:
        config.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_CPU)
    for i, group in enumerate(config.instance_group):
        if not group.name:
            group.name = f"{config.name}_{i}"
        if group.count == 0:
            group.count = 1
    if not config.HasField("version_policy"):
        config.version_policy.latest.num_versions = 1
    return config, Signature(tuple(inputs), tuple(outputs), config.max_batch_size)


def _copy(config: mc.ModelConfig) -> mc.ModelConfig:
    copy = mc.ModelConfig()
    copy.CopyFrom(config)
    return copy


def _complete_tensors(kind: str, declared: Any, graph: list[GraphTensor], batched: bool) -> list[TensorSpec]:
    by_name = {t.name: t for t in graph}
    for entry in declared:
        if entry.name not in by_name:
            raise ModelLoadError(
                f"config {kind} '{entry.name}' is not a {kind} of the model; the model's {kind}s are "
                f"{list(by_name)}"
            )
    declared_names = {entry.name for entry in declared}
    for tensor in graph:
        if tensor.name not in declared_names:
            entry = declared.add(name=tensor.name)
            entry.data_type = mc.DataType.Value(_datatype_of(kind, tensor).config)
            dims = tensor.shape[1:] if batched else tensor.shape
            entry.dims.extend(-1 if d is None else d for d in dims)
    order = {t.name: i for i, t in enumerate(graph)}
    specs = sorted(
        (_spec(kind, entry, by_name[entry.name], batched) for entry in declared), key=lambda s: order[s.name]
    )
    return specs


def _datatype_of(kind: str, tensor: GraphTensor) -> datatypes.Datatype:
    dtype = datatypes.BY_ONNX.get(tensor.onnx_type)
    if dtype is None:
        raise ModelLoadError(
            f"model {kind} '{tensor.name}' has type {tensor.onnx_type}, which hotwire cannot serve"
        )
    return dtype


def _spec(kind: str, entry: Any, tensor: GraphTensor, batched: bool) -> TensorSpec:
    model_dtype = _datatype_of(kind, tensor)
    declared = mc.DataType.Name(entry.data_type)
    if entry.data_type == mc.TYPE_INVALID:
        entry.data_type = mc.DataType.Value(model_dtype.config)
    elif declared != model_dtype.config:
        raise ModelLoadError(
            f"config {kind} '{entry.name}': data_type {declared} but the model has {model_dtype.config}"
        )
    graph_dims = tensor.shape[1:] if batched else tensor.shape
    model_dims = tuple(-1 if d is None else d for d in graph_dims)
    dims = tuple(entry.dims)
    if entry.HasField("reshape"):
        target = tuple(entry.reshape.shape)
        _check_dims(kind, entry.name, "reshape", target, model_dims)
        if _known_count(dims) and _known_count(target) and _known_count(dims) != _known_count(target):
            raise ModelLoadError(
                f"config {kind} '{entry.name}': dims {list(dims)} cannot reshape to {list(target)}"
            )
        model_dims = target
    else:
        _check_dims(kind, entry.name, "dims", dims, model_dims)
    ragged = bool(getattr(entry, "allow_ragged_batch", False)) and batched
    if ragged and len(dims) > 3:
        raise ModelLoadError(
            f"config {kind} '{entry.name}': allow_ragged_batch supports up to 3 dims, got {list(dims)}"
        )
    return TensorSpec(
        entry.name, model_dtype, dims, model_dims, bool(getattr(entry, "optional", False)), ragged
    )


def _known_count(dims: tuple[int, ...]) -> int:
    """The element count of dims with no -1 in them; 0 otherwise."""
    return 0 if any(d < 0 for d in dims) else datatypes.element_count(dims)


def _check_dims(kind: str, name: str, field: str, dims: tuple[int, ...], model_dims: tuple[int, ...]) -> None:
    compatible = len(dims) == len(model_dims) and all(
        a == b or a == -1 or b == -1 for a, b in zip(dims, model_dims)
    )
    if not compatible:
        raise ModelLoadError(
            f"config {kind} '{name}': {field} {list(dims)} do not match the model's {list(model_dims)} "
            "(batch dimension excluded when max_batch_size > 0)"
        )


# ------------------------------------------------------------------------------------------------------------
# config parameters: every `parameters` entry hotwire reads is read and checked here, and nowhere else


def parse_bool_parameter(key: str, text: str) -> bool:
    """The one reading of a boolean config parameter: config.parse_bool's words (true/false, 1/0, yes/no,
    on/off, any case); anything else is a ModelLoadError naming the parameter, never a silent false."""
    value = parse_bool(text)
    if value is None:
        raise ModelLoadError(f"parameters '{key}': expected true or false, got '{text.strip()}'")
    return value


class _Parameters:
    """A config's `parameters` (their string_value, stripped), read by key as the type each key takes; a value
    that is not one raises `error` naming the parameter and what was expected."""

    def __init__(self, config: mc.ModelConfig, error: type[Exception] = ModelLoadError) -> None:
        self._values = {key: value.string_value.strip() for key, value in config.parameters.items()}
        self._error = error

    def text(self, key: str) -> str | None:
        return self._values.get(key)

    def boolean(self, key: str, default: bool) -> bool:
        text = self._values.get(key)
        return default if text is None else parse_bool_parameter(key, text)

    def integer(self, key: str, default: int, minimum: int = 0) -> int:
        text = self._values.get(key)
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            raise self._error(f"parameters '{key}': expected an integer, got '{text}'") from None
        if value < minimum:
            raise self._error(f"parameters '{key}': expected >= {minimum}, got {value}")
        return value

    def optional_integer(self, key: str) -> int | None:
        """An integer >= 0, or None when absent, empty or `none`."""
        text = self._values.get(key)
        return None if text is None or text.lower() in ("", "none") else self.integer(key, 0)

    def number(self, key: str, default: float) -> float:
        text = self._values.get(key)
        if text is None:
            return default
        try:
            return float(text)
        except ValueError:
            raise self._error(f"parameters '{key}': expected a number, got '{text}'") from None

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        text = self._values.get(key)
        if text is None:
            return default
        value = text.lower()
        if value not in choices:
            raise self._error(f"parameters '{key}': expected one of {choices}, got '{value}'")
        return value


@dataclass(frozen=True)
class OrtOptions:
    """ONNX Runtime session settings: Triton's ORT backend keys, plus hotwire's, and `optimization.graph`."""

    intra_op_threads: int
    inter_op_threads: int
    allow_spinning: bool
    graph_optimization: str  # disable | basic | extended | all
    parallel_execution: bool
    enable_mem_arena: bool
    enable_mem_pattern: bool


@dataclass(frozen=True)
class DriftParameters:
    """`drift_monitoring` (monitor even without a drift_reference.npz in the model's directory, capturing the
    reference from the first `reference_rows` rows), `drift_window_rows`, `drift_reference_rows`."""

    monitoring: bool = False
    window_rows: int = 1000
    reference_rows: int = 1000


@dataclass(frozen=True)
class ModelParameters:
    """What a version's config parameters set, checked. The traffic parameters are the model's, for all its
    versions: `traffic_policy` reads them."""

    ort: OrtOptions
    # `execution`: `thread` runs ORT on the instance's thread, `inline` on the event loop, `auto` (default)
    # inline when warm-up shows the largest batch computes within runner.INLINE_MAX_COMPUTE_S.
    execution: str
    drift: DriftParameters
    preprocess: str | None  # `preprocess`: a pipeline declaration's JSON (preprocess.declaration reads it)
    gpu: GpuOptions


_GRAPH_LEVELS = ("disable", "basic", "extended", "all")
EXECUTION_MODES = ("auto", "inline", "thread")


def model_parameters(config: mc.ModelConfig) -> ModelParameters:
    """Every config parameter a version acts on; ModelLoadError naming the first one that is malformed."""
    params = _Parameters(config)
    return ModelParameters(
        ort=_ort_options(config, params),
        execution=params.choice("execution", EXECUTION_MODES, "auto"),
        drift=DriftParameters(
            monitoring=params.boolean("drift_monitoring", False),
            window_rows=params.integer("drift_window_rows", 1000, minimum=1),
            reference_rows=params.integer("drift_reference_rows", 1000, minimum=1),
        ),
        preprocess=params.text("preprocess"),
        gpu=_gpu_options(config, params),
    )


def default_intra_op_threads(instances: int) -> int:
    # Leave half the cores to the gRPC event loop and request decoding; share the rest among instances.
    cores = os.cpu_count() or 1
    return max(1, (cores // 2) // max(1, instances))


def _ort_options(config: mc.ModelConfig, params: _Parameters) -> OrtOptions:
    instances = sum(group.count for group in config.instance_group) or 1
    level = "all"
    if config.optimization.HasField("graph"):
        level = {-1: "basic", 1: "extended"}.get(config.optimization.graph.level, "all")  # Triton's mapping
    return OrtOptions(
        intra_op_threads=params.integer("intra_op_thread_count", 0) or default_intra_op_threads(instances),
        inter_op_threads=params.integer("inter_op_thread_count", 0) or 1,
        allow_spinning=params.boolean("allow_spinning", False),
        graph_optimization=params.choice("graph_optimization_level", _GRAPH_LEVELS, level),
        parallel_execution=params.integer("execution_mode", 0) == 1,
        enable_mem_arena=params.boolean("enable_mem_arena", True),
        enable_mem_pattern=params.boolean("enable_mem_pattern", True),
    )


@dataclass(frozen=True)
class TensorrtOptions:
    """The TensorRT execution provider, asked for by a `tensorrt` gpu_execution_accelerator: its provider
    options as given (Triton's names translated), and the engine cache directory relative to the model's."""

    options: tuple[tuple[str, str], ...]
    engine_cache: str | None  # a path inside the model directory; None: no engine cache


@dataclass(frozen=True)
class GpuOptions:
    """What a KIND_GPU instance's CUDA execution provider is given: the ORT backend's config parameters
    (gpu_mem_limit, arena_extend_strategy, cudnn_conv_algo_search), a `cuda` gpu_execution_accelerator's
    parameters, TensorRT when asked for, and `optimization.cuda.graphs`."""

    cuda: tuple[tuple[str, str], ...] = ()
    tensorrt: TensorrtOptions | None = None
    cuda_graphs: bool = False
    graph_batch_sizes: tuple[int, ...] = ()  # graph_spec's batch sizes, unchecked; () = the warm-up buckets

    @property
    def configured(self) -> bool:
        return bool(self.cuda or self.tensorrt or self.cuda_graphs)


_ARENA_STRATEGIES = {"0": "kNextPowerOfTwo", "1": "kSameAsRequested"}
_CONV_ALGO_SEARCH = {"0": "EXHAUSTIVE", "1": "HEURISTIC", "2": "DEFAULT"}
# The CUDA provider options a `cuda` accelerator may pass through (ORT's own names and values); the rest are
# set from the config above (device_id from instance_group, enable_cuda_graph from optimization.cuda).
_CUDA_PASS_THROUGH = frozenset(
    {
        "cudnn_conv_use_max_workspace",
        "cudnn_conv1d_pad_to_nc1d",
        "do_copy_in_default_stream",
        "use_ep_level_unified_stream",
        "use_tf32",
        "prefer_nhwc",
        "tunable_op_enable",
        "tunable_op_tuning_enable",
        "enable_skip_layer_norm_strict_mode",
    }
)
# Triton's ORT backend names for TensorRT settings, and ORT's (passed through as they are).
_TRT_TRITON_NAMES = {
    "max_workspace_size_bytes": "trt_max_workspace_size",
    "trt_engine_cache_enable": "trt_engine_cache_enable",
    "max_partition_iterations": "trt_max_partition_iterations",
    "minimum_segment_size": "trt_min_subgraph_size",
}
_TRT_PASS_THROUGH = frozenset(
    {
        "trt_max_workspace_size",
        "trt_max_partition_iterations",
        "trt_min_subgraph_size",
        "trt_timing_cache_enable",
        "trt_builder_optimization_level",
        "trt_layer_norm_fp32_fallback",
        "trt_build_heuristics_enable",
        "trt_sparsity_enable",
        "trt_auxiliary_streams",
        "trt_cuda_graph_enable",
    }
)


def _gpu_options(config: mc.ModelConfig, params: _Parameters) -> GpuOptions:
    cuda: dict[str, str] = {}
    limit = params.optional_integer("gpu_mem_limit")
    if limit is not None:
        if limit < 1:
            raise ModelLoadError("parameters 'gpu_mem_limit': expected a number of bytes >= 1, got 0")
        cuda["gpu_mem_limit"] = str(limit)
    for key, names in (
        ("arena_extend_strategy", _ARENA_STRATEGIES),
        ("cudnn_conv_algo_search", _CONV_ALGO_SEARCH),
    ):
        text = params.text(key)
        if text is None:
            continue
        by_name = {name.lower(): name for name in names.values()}
        value = names.get(text) or by_name.get(text.lower())
        if value is None:
            accepted = [f"{number} or {name}" for number, name in names.items()]
            raise ModelLoadError(f"parameters '{key}': expected one of {accepted}, got '{text}'")
        cuda[key] = value
    tensorrt: TensorrtOptions | None = None
    for i, accelerator in enumerate(config.optimization.execution_accelerators.gpu_execution_accelerator):
        where = f"optimization.execution_accelerators.gpu_execution_accelerator[{i}]"
        given = {key: value.strip() for key, value in accelerator.parameters.items()}
        if accelerator.name == "cuda":
            unknown = sorted(set(given) - _CUDA_PASS_THROUGH)
            if unknown:
                raise ModelLoadError(
                    f"{where} (cuda): unknown parameters {unknown}; accepted: {sorted(_CUDA_PASS_THROUGH)}"
                )
            cuda.update(given)
        elif accelerator.name == "tensorrt":
            tensorrt = _tensorrt_options(where, given)
        else:
            raise ModelLoadError(
                f"{where}: accelerator '{accelerator.name}' is not supported; use cuda or tensorrt"
            )
    graphs = config.optimization.cuda
    sizes = tuple(sorted({spec.batch_size for spec in graphs.graph_spec}))
    if graphs.graph_spec and not graphs.graphs:
        raise ModelLoadError("optimization.cuda: graph_spec is set but graphs is false")
    if any(size < 0 or size > config.max_batch_size for size in sizes) or (
        config.max_batch_size and 0 in sizes
    ):
        raise ModelLoadError(
            f"optimization.cuda.graph_spec: batch sizes {list(sizes)} must lie in 1..max_batch_size "
            f"({config.max_batch_size}), or be 0 for a model that does not batch"
        )
    return GpuOptions(tuple(sorted(cuda.items())), tensorrt, graphs.graphs, sizes)


def _tensorrt_options(where: str, given: dict[str, str]) -> TensorrtOptions:
    options: dict[str, str] = {}
    engine_cache: str | None = None
    for key, value in given.items():
        if key == "precision_mode":
            if value.upper() not in ("FP32", "FP16"):
                raise ModelLoadError(
                    f"{where} (tensorrt): precision_mode expected FP32 or FP16, got '{value}' (INT8 needs a "
                    "calibration table hotwire does not build)"
                )
            options["trt_fp16_enable"] = "1" if value.upper() == "FP16" else "0"
        elif key in ("trt_engine_cache_path", "engine_cache_path"):
            engine_cache = _inside_model_directory(f"{where} (tensorrt): {key}", value)
        elif key in _TRT_TRITON_NAMES or key in _TRT_PASS_THROUGH:
            options[_TRT_TRITON_NAMES.get(key, key)] = value
        else:
            accepted = sorted(
                {"precision_mode", "trt_engine_cache_path", *_TRT_TRITON_NAMES, *_TRT_PASS_THROUGH}
            )
            raise ModelLoadError(f"{where} (tensorrt): unknown parameter '{key}'; accepted: {accepted}")
    if engine_cache is None and parse_bool(options.get("trt_engine_cache_enable", "0")):
        engine_cache = "trt_engines"
    if engine_cache is not None:
        options["trt_engine_cache_enable"] = "1"
    return TensorrtOptions(tuple(sorted(options.items())), engine_cache)


def _inside_model_directory(what: str, text: str) -> str:
    """A relative path that stays inside the model's directory: a config can come from the network (the
    repository API's uploads), and nothing it names may be written outside the repository."""
    path = Path(text)
    if not text or path.is_absolute() or ".." in path.parts:
        raise ModelLoadError(
            f"{what}: expected a path relative to the model's directory, without '..', got '{text}'"
        )
    return path.as_posix()


def traffic_policy(config: mc.ModelConfig) -> TrafficPolicy:
    """The model's traffic policy from its config parameters: stable_version, canary_version, canary_weight,
    sticky_parameter, shadow_version, shadow_fraction, standby_versions, canary_max_error_rate,
    canary_max_p99_ms, canary_guard_window_s, canary_guard_min_requests. InvalidInput, which fails the whole
    model before any of its versions loads, naming the parameter that is malformed."""
    params = _Parameters(config, InvalidInput)
    defaults, guard = TrafficPolicy(), GuardPolicy()
    return TrafficPolicy(
        stable=params.optional_integer("stable_version"),
        canary=params.optional_integer("canary_version"),
        canary_weight=params.number("canary_weight", defaults.canary_weight),
        sticky_parameter=params.text("sticky_parameter") or defaults.sticky_parameter,
        shadow=params.optional_integer("shadow_version"),
        shadow_fraction=params.number("shadow_fraction", defaults.shadow_fraction),
        standby=params.optional_integer("standby_versions") or defaults.standby,
        guard=GuardPolicy(
            max_error_rate=params.number("canary_max_error_rate", guard.max_error_rate),
            max_p99_ms=params.number("canary_max_p99_ms", guard.max_p99_ms),
            window_s=params.number("canary_guard_window_s", guard.window_s),
            min_requests=params.integer("canary_guard_min_requests", guard.min_requests),
        ),
    ).check()


# ------------------------------------------------------------------------------------------------------------
# fallbacks and circuit breakers (fallback.py acts on them; ARCHITECTURE.md §Fallbacks and circuit breakers)


@dataclass(frozen=True)
class BreakerParameters:
    """`breaker_consecutive_failures` (0: off) opens the breaker after that many failures in a row;
    `breaker_error_rate` (0: off) once that fraction of the last `breaker_window` requests failed; it stays
    open `breaker_open_seconds`, then lets one probe request through."""

    consecutive_failures: int = 0
    error_rate: float = 0.0
    window: int = 20
    open_seconds: float = 10.0

    @property
    def enabled(self) -> bool:
        return self.consecutive_failures > 0 or self.error_rate > 0


@dataclass(frozen=True)
class FallbackParameters:
    """A model's fallback (`fallback_model` [+ `fallback_model_version`], or `fallback_response`) and its
    circuit breaker. `response` is the parsed JSON object, output name -> value (one row for a batched model),
    checked against the outputs of each version at its load (fallback.constant_outputs)."""

    model: str | None = None
    model_version: str = ""  # "": the fallback model's own routing (stable, or its canary's share)
    response: tuple[tuple[str, Any], ...] | None = None
    breaker: BreakerParameters = BreakerParameters()

    @property
    def configured(self) -> bool:
        """Whether the data plane guards this model at all (the fast path skips every model for which not)."""
        return self.model is not None or self.response is not None or self.breaker.enabled


def fallback_parameters(config: mc.ModelConfig) -> FallbackParameters:
    """The model's fallback and breaker from its config parameters: a ConfigError naming the model and the
    parameter when one is malformed, which fails that model's load only (before any of its versions loads)."""
    try:
        return _fallback_parameters(config, _Parameters(config, ConfigError))
    except ConfigError as exc:
        raise ConfigError(f"model '{config.name}': {exc}") from None


def _fallback_parameters(config: mc.ModelConfig, params: _Parameters) -> FallbackParameters:
    defaults = BreakerParameters()
    model = params.text("fallback_model")
    if model is not None:
        if not model or any(c in model for c in "/\\\0") or model in (".", ".."):
            raise ConfigError(f"parameters 'fallback_model': expected a model name, got '{model}'")
        if model == config.name:
            # A model falling back to itself would only repeat the failure (ARCHITECTURE.md: no loops).
            raise ConfigError("parameters 'fallback_model': a model cannot be its own fallback")
    number = params.optional_integer("fallback_model_version")
    if number is not None and model is None:
        raise ConfigError("parameters 'fallback_model_version': set without 'fallback_model'")
    response = _fallback_response(params.text("fallback_response"))
    if model is not None and response is not None:
        raise ConfigError("parameters 'fallback_response': set together with 'fallback_model'; choose one")
    error_rate = _finite(params, "breaker_error_rate", defaults.error_rate)
    if not 0 <= error_rate <= 1:
        raise ConfigError(
            f"parameters 'breaker_error_rate': expected a fraction from 0 to 1, got {error_rate}"
        )
    open_seconds = _finite(params, "breaker_open_seconds", defaults.open_seconds)
    if open_seconds <= 0:
        raise ConfigError(f"parameters 'breaker_open_seconds': expected > 0, got {open_seconds}")
    breaker = BreakerParameters(
        consecutive_failures=params.integer("breaker_consecutive_failures", defaults.consecutive_failures),
        error_rate=error_rate,
        window=params.integer("breaker_window", defaults.window, minimum=1),
        open_seconds=open_seconds,
    )
    if not breaker.enabled:
        # a window or open time with nothing to open the breaker is a typo'd or forgotten trigger
        for key in ("breaker_window", "breaker_open_seconds"):
            if params.text(key) is not None:
                raise ConfigError(
                    f"parameters '{key}': set, but no breaker trigger is "
                    "('breaker_consecutive_failures' or 'breaker_error_rate' above 0)"
                )
    elif params.text("breaker_window") is not None and breaker.error_rate == 0:
        raise ConfigError("parameters 'breaker_window': set, but 'breaker_error_rate' is not")
    return FallbackParameters(model, "" if number is None else str(number), response, breaker)


def _finite(params: _Parameters, key: str, default: float) -> float:
    value = params.number(key, default)
    if not math.isfinite(value):
        raise ConfigError(f"parameters '{key}': expected a finite number, got {value}")
    return value


def _fallback_response(text: str | None) -> tuple[tuple[str, Any], ...] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"parameters 'fallback_response': not JSON: {exc}") from None
    except RecursionError:  # json.loads of e.g. "[" * 100000
        raise ConfigError("parameters 'fallback_response': its JSON is nested too deeply") from None
    if not isinstance(value, dict) or not value:
        raise ConfigError(
            "parameters 'fallback_response': expected a JSON object of output name -> value "
            '(e.g. {"OUTPUT0": [0.0, 1.0]})'
        )
    return tuple(value.items())
