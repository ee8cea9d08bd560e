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
from hotwire.server.errors import ModelLoadError
from hotwire.server.model_config import OrtOptions

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

    @property
    def label(self) -> str:
        return "cpu" if self.kind == "cpu" else f"gpu:{self.device_id}"


def placements(group: mc.ModelInstanceGroup) -> list[Placement]:
    """One placement per instance of an instance_group (count per GPU for KIND_GPU, as Triton does)."""
    available = ort.get_available_providers()
    kind = group.kind
    if kind == mc.ModelInstanceGroup.KIND_AUTO:
        kind = (
            mc.ModelInstanceGroup.KIND_GPU
            if "CUDAExecutionProvider" in available
            else mc.ModelInstanceGroup.KIND_CPU
        )
    if kind == mc.ModelInstanceGroup.KIND_CPU:
        return [Placement("cpu", 0, (("CPUExecutionProvider", {}),))] * group.count
    if kind != mc.ModelInstanceGroup.KIND_GPU:
        raise ModelLoadError(
            f"instance_group '{group.name}': kind {mc.ModelInstanceGroup.Kind.Name(kind)} is not supported"
        )
    if "CUDAExecutionProvider" not in available:
        raise ModelLoadError(
            f"instance_group '{group.name}' asks for KIND_GPU but this onnxruntime has no "
            "CUDAExecutionProvider "
            f"(available: {available}); install hotwire[gpu] or use KIND_CPU"
        )
    gpus = list(group.gpus) or [0]
    return [
        Placement(
            "gpu", gpu, (("CUDAExecutionProvider", {"device_id": str(gpu)}), ("CPUExecutionProvider", {}))
        )
        for gpu in gpus
        for _ in range(group.count)
    ]


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


def create_session(model_file: Path, options: OrtOptions, placement: Placement) -> ort.InferenceSession:
    """Create a session; slow and GIL-holding, so callers run it off the event loop."""
    try:
        return ort.InferenceSession(
            str(model_file),
            sess_options=session_options(options),
            providers=[name for name, _ in placement.providers],
            provider_options=[opts for _, opts in placement.providers],
        )
    except Exception as exc:  # ORT raises its own exception types for corrupt or unsupported models
        raise ModelLoadError(f"onnxruntime could not load {model_file}: {exc}") from exc


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
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def run_sync(self, feeds: dict[str, np.ndarray], output_names: Sequence[str]) -> list[np.ndarray]:
        """Runs on this instance's thread (or, inline, on the loop thread)."""
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
