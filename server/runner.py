"""ONNX Runtime sessions and the executor threads that run them.

One `Instance` per `instance_group` entry × count: its own session on its own single-thread executor, so the
event loop never blocks on ORT and instances of one model run concurrently (`session.run` releases the GIL).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnxruntime as ort

from hotwire.proto import model_config_pb2 as mc
from hotwire.server.cuda_graphs import GraphedBatches
from hotwire.server.errors import ModelLoadError
from hotwire.server.model_config import GpuOptions, OrtOptions

log = logging.getLogger(__name__)
T = TypeVar("T")

_GRAPH_LEVEL = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True)
class Placement:
    """Where an instance runs: the ORT execution providers, in preference order, with their options."""

    kind: str  # "cpu" | "gpu"
    device_id: int
    providers: tuple[tuple[str, dict[str, str]], ...]
    chosen_by_auto: bool = False  # KIND_AUTO picked it: a GPU that does not start falls back to the CPU

    @property
    def label(self) -> str:
        return "cpu" if self.kind == "cpu" else f"gpu:{self.device_id}"


CPU_PLACEMENT = Placement("cpu", 0, (("CPUExecutionProvider", {}),))
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"


def placements(
    group: mc.ModelInstanceGroup,
    gpu: GpuOptions | None = None,
    model_dir: Path | None = None,
    config: mc.ModelConfig | None = None,
) -> list[Placement]:
    """One placement per instance of an instance_group (count per GPU for KIND_GPU, as Triton does). A GPU
    placement carries the CUDA provider's options (and TensorRT's, ahead of it, when asked for)."""
    gpu = gpu or GpuOptions()
    available = ort.get_available_providers()
    kind = group.kind
    auto = kind == mc.ModelInstanceGroup.KIND_AUTO
    if auto:
        kind = mc.ModelInstanceGroup.KIND_GPU if CUDA in available else mc.ModelInstanceGroup.KIND_CPU
    if kind == mc.ModelInstanceGroup.KIND_CPU:
        if gpu.cuda_graphs or gpu.tensorrt is not None:
            raise ModelLoadError(
                f"instance_group '{group.name}' runs on the CPU, but the config asks for "
                f"{'CUDA graphs (optimization.cuda.graphs)' if gpu.cuda_graphs else 'TensorRT'}, which need "
                f"KIND_GPU and onnxruntime-gpu (available providers: {available})"
            )
        return [CPU_PLACEMENT] * group.count
    if kind != mc.ModelInstanceGroup.KIND_GPU:
        raise ModelLoadError(
            f"instance_group '{group.name}': kind {mc.ModelInstanceGroup.Kind.Name(kind)} is not supported"
        )
    if CUDA not in available:
        raise ModelLoadError(
            f"instance_group '{group.name}' asks for KIND_GPU but this onnxruntime has no {CUDA} "
            f"(available: {available}); install hotwire[gpu] or use KIND_CPU"
        )
    if gpu.tensorrt is not None and TENSORRT not in available:
        raise ModelLoadError(
            f"the config asks for the tensorrt accelerator but this onnxruntime has no {TENSORRT} "
            f"(available: {available}); install TensorRT's libraries or drop the accelerator"
        )
    gpus = list(group.gpus) or [0]
    return [
        Placement("gpu", device, _gpu_providers(device, gpu, model_dir, config), chosen_by_auto=auto)
        for device in gpus
        for _ in range(group.count)
    ]


def _gpu_providers(
    device: int, gpu: GpuOptions, model_dir: Path | None, config: mc.ModelConfig | None
) -> tuple[tuple[str, dict[str, str]], ...]:
    cuda = {"device_id": str(device), **dict(gpu.cuda)}
    if gpu.cuda_graphs:
        cuda["enable_cuda_graph"] = "1"
    providers: list[tuple[str, dict[str, str]]] = [(CUDA, cuda), ("CPUExecutionProvider", {})]
    if gpu.tensorrt is not None:
        trt = {"device_id": str(device), **dict(gpu.tensorrt.options)}
        if gpu.tensorrt.engine_cache is not None and model_dir is not None:
            trt["trt_engine_cache_path"] = str(model_dir / gpu.tensorrt.engine_cache)
        trt.update(tensorrt_profiles(config) if config is not None else {})
        providers.insert(0, (TENSORRT, trt))
    return tuple(providers)


def tensorrt_profiles(config: mc.ModelConfig) -> dict[str, str]:
    """One TensorRT optimization profile covering every batch bucket (1 to max_batch_size, tuned at the
    largest) when the config declares every input's dims and they are fixed; otherwise none, and TensorRT
    builds an engine per new shape it meets (cached when the engine cache is on)."""
    shapes: list[tuple[str, list[int]]] = []
    for entry in config.input:
        dims = list(entry.reshape.shape) if entry.HasField("reshape") else list(entry.dims)
        if not entry.dims or any(d < 0 for d in dims):
            return {}
        shapes.append((entry.name, dims))
    if not shapes:
        return {}

    def profile(rows: int) -> str:
        return ",".join(
            f"{name}:{'x'.join(str(d) for d in ([rows] if config.max_batch_size else []) + dims)}"
            for name, dims in shapes
        )

    largest = max(1, config.max_batch_size)
    return {
        "trt_profile_min_shapes": profile(1),
        "trt_profile_opt_shapes": profile(largest),
        "trt_profile_max_shapes": profile(largest),
    }


def session_options(options: OrtOptions) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = options.intra_op_threads
    so.inter_op_num_threads = options.inter_op_threads
    so.graph_optimization_level = _GRAPH_LEVEL[options.graph_optimization]
    so.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL if options.parallel_execution else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    so.enable_cpu_mem_arena = options.enable_mem_arena
    so.enable_mem_pattern = options.enable_mem_pattern
    # Spinning intra-op threads burn the cores the gRPC loop needs on small machines: off unless asked for.
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.allow_spinning else "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "1" if options.allow_spinning else "0")
    so.log_severity_level = 3
    return so


def create_session(
    model_file: Path, options: OrtOptions, placement: Placement
) -> tuple[ort.InferenceSession, Placement]:
    """Create a session, and where it really runs; slow and GIL-holding, so callers run it off the event loop.

    ONNX Runtime falls back to the CPU, with a warning only, when a GPU provider it was asked for cannot
    start (no device, a missing CUDA or cuDNN library): a config that demands the GPU fails its load instead,
    and KIND_AUTO says where it landed."""
    try:
        session = ort.InferenceSession(
            str(model_file),
            sess_options=session_options(options),
            providers=[name for name, _ in placement.providers],
            provider_options=[opts for _, opts in placement.providers],
        )
    except Exception as exc:  # ORT raises its own exception types for corrupt or unsupported models
        raise ModelLoadError(f"onnxruntime could not load {model_file}: {exc}") from exc
    if placement.kind != "gpu":
        return session, placement
    wanted = [name for name, _ in placement.providers if name != "CPUExecutionProvider"]
    running = session.get_providers()
    missing = [name for name in wanted if name not in running]
    if placement.chosen_by_auto:
        landed = placement if not missing else CPU_PLACEMENT
        log.info(
            "%s: KIND_AUTO runs on %s (%s)",
            model_file,
            landed.label,
            ", ".join(running),
            extra={"event": "kind_auto_placement", "placement": landed.label, "providers": running},
        )
        return session, landed
    if missing:
        raise ModelLoadError(
            f"onnxruntime could not start {', '.join(missing)} on device {placement.device_id} for "
            f"{model_file} (it would run on {running}); the config asks for KIND_GPU, so it does not fall "
            "back to the CPU: check the device is visible (CUDA_VISIBLE_DEVICES) and CUDA/cuDNN are installed"
        )
    return session, placement


# A model whose largest batch computes within this runs on the event loop ("inline"): handing work to a thread
# and back costs two cross-thread wake-ups, measured at 66-87 µs on a 2-core VM, far more than such a model's
# compute; blocking the loop this briefly costs less than the hop it saves.
INLINE_MAX_COMPUTE_S = 200e-6


class Instance:
    """One ORT session and the one thread that runs it; the session is only ever touched from that thread.

    Inline instances (tiny models, see INLINE_MAX_COMPUTE_S) run on the event loop thread instead.
    """

    def __init__(
        self, name: str, session: ort.InferenceSession, placement: Placement, inline: bool = False
    ) -> None:
        self.name = name
        self.session = session
        self.placement = placement
        self.inline = inline
        self.graphs: GraphedBatches | None = None  # optimization.cuda.graphs: fixed buckets, replayed
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def run_sync(self, feeds: dict[str, np.ndarray], output_names: Sequence[str]) -> list[np.ndarray]:
        """Runs on this instance's thread (or, inline, on the loop thread)."""
        if self.graphs is not None:
            return self.graphs.run(feeds, output_names)
        if self.placement.kind == "gpu" and any(
            hasattr(v, "__cuda_array_interface__") for v in feeds.values()
        ):
            return self._run_bound(feeds, output_names)
        return self.session.run(list(output_names), feeds)

    def _run_bound(self, feeds: dict[str, Any], output_names: Sequence[str]) -> list[np.ndarray]:
        """Feeds already on the GPU (a GPU preprocessing pipeline's output) are bound by device pointer: no
        copy back to the host and up again. Only a machine with a CUDA device runs this path
        (tests/server/test_gpu.py skips it elsewhere)."""
        binding = self.session.io_binding()
        for name, value in feeds.items():
            interface = getattr(value, "__cuda_array_interface__", None)
            if interface is None:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
                continue
            binding.bind_input(
                name,
                "cuda",
                self.placement.device_id,
                np.dtype(interface["typestr"]),
                list(interface["shape"]),
                interface["data"][0],
            )
        for name in output_names:
            binding.bind_output(name)
        self.session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on this instance's thread while the event loop goes on; inline: right here."""
        if self.inline:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.session = None  # type: ignore[assignment]  # drop ORT's memory now, not at the next GC
