"""CUDA graphs for fixed batch buckets, through IO binding (`optimization.cuda.graphs` in a model's config).

ONNX Runtime's CUDA provider captures a session's kernel launches once per graph id and replays them at the
cost of one launch, but only while every input and output stays at the same device address with the same
shape. So each bucket (a batch size from `graph_spec`, or the warm-up buckets: 1, the preferred sizes,
max_batch_size) gets its own preallocated device tensors, its own binding and its own graph id; a batch is
padded up to the smallest bucket that holds it, copied into that bucket's inputs, replayed, and its rows
sliced off the outputs. The padded rows cost compute, never correctness: batched rows are independent, as
dynamic batching already assumes.

The same code runs with CPU tensors (device "cpu"), where ORT has no graph to capture: that is how the
padding, binding and slicing are tested on machines without a GPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from hotwire.proto import model_config_pb2 as mc
from hotwire.server.errors import ModelLoadError
from hotwire.server.model_config import GpuOptions, Signature

GRAPH_ID_KEY = "gpu_graph_id"  # ORT's run option selecting which captured graph a run replays


@dataclass(frozen=True)
class BoundTensor:
    name: str
    dims: tuple[int, ...]  # the ONNX tensor's dims, batch dimension excluded; all fixed
    dtype: np.dtype


@dataclass(frozen=True)
class GraphPlan:
    """What one instance captures: the batch buckets (() for a model that does not batch: one graph of its
    fixed shapes) and every input and output, with fixed shapes."""

    batch_sizes: tuple[int, ...]
    inputs: tuple[BoundTensor, ...]
    outputs: tuple[BoundTensor, ...]


def graph_plan(signature: Signature, config: mc.ModelConfig, gpu: GpuOptions) -> GraphPlan:
    """The buckets and tensors CUDA graphs need; ModelLoadError naming what makes the model unfit for them."""
    for kind, specs in (("input", signature.inputs), ("output", signature.outputs)):
        for spec in specs:
            if any(d < 0 for d in spec.model_dims):
                raise ModelLoadError(
                    f"optimization.cuda.graphs: {kind} '{spec.name}' has dims {list(spec.model_dims)}; a "
                    "CUDA graph replays fixed shapes only, so every dim but the batch must be fixed"
                )
            if spec.datatype.itemsize == 0:
                raise ModelLoadError(
                    f"optimization.cuda.graphs: {kind} '{spec.name}' is {spec.datatype.name}; only numeric "
                    "tensors can live in preallocated device buffers"
                )
            if spec.optional:
                raise ModelLoadError(
                    f"optimization.cuda.graphs: input '{spec.name}' is optional; a graph binds every input"
                )
    sizes: tuple[int, ...] = ()
    if signature.batched:
        sizes = gpu.graph_batch_sizes or tuple(
            sorted({1, *config.dynamic_batching.preferred_batch_size, signature.max_batch_size})
        )
        if sizes[0] < 1 or sizes[-1] != signature.max_batch_size:
            raise ModelLoadError(
                f"optimization.cuda.graph_spec: batch sizes {list(sizes)} must lie in 1..max_batch_size "
                f"({signature.max_batch_size}) and include it: a batch can be that large"
            )

    def bound(specs: Sequence) -> tuple[BoundTensor, ...]:
        return tuple(BoundTensor(s.name, s.model_dims, s.datatype.numpy) for s in specs)

    return GraphPlan(sizes, bound(signature.inputs), bound(signature.outputs))


@dataclass
class _Bucket:
    rows: int  # 0: the model does not batch
    binding: ort.IOBinding
    run_options: ort.RunOptions
    staging: dict[str, np.ndarray]  # host buffers a batch is padded in before its copy to the device
    inputs: dict[str, ort.OrtValue]
    outputs: dict[str, ort.OrtValue]


class GraphedBatches:
    """One instance's buckets. Only its instance's thread calls `run` (ORT bindings are not thread-safe)."""

    def __init__(self, session: ort.InferenceSession, device: str, device_id: int, plan: GraphPlan) -> None:
        self.plan = plan
        self._copy_outputs = device == "cpu"  # a CPU OrtValue's numpy() is a view of the reused buffer
        self._buckets: list[_Bucket] = []
        for graph_id, rows in enumerate(plan.batch_sizes or (0,)):
            lead = (rows,) if plan.batch_sizes else ()

            def allocate(tensor: BoundTensor, lead: tuple[int, ...] = lead) -> ort.OrtValue:
                return ort.OrtValue.ortvalue_from_shape_and_type(
                    list(lead + tensor.dims), tensor.dtype, device, device_id
                )

            binding = session.io_binding()
            inputs = {t.name: allocate(t) for t in plan.inputs}
            outputs = {t.name: allocate(t) for t in plan.outputs}
            for name, value in inputs.items():
                binding.bind_ortvalue_input(name, value)
            for name, value in outputs.items():
                binding.bind_ortvalue_output(name, value)
            run_options = ort.RunOptions()
            run_options.add_run_config_entry(GRAPH_ID_KEY, str(graph_id))
            staging = {t.name: np.zeros(lead + t.dims, t.dtype) for t in plan.inputs}
            self._buckets.append(_Bucket(rows, binding, run_options, staging, inputs, outputs))
        self._session = session

    def bucket_rows(self, rows: int) -> int:
        """The batch size `rows` rows run at: the smallest bucket that holds them."""
        return self._bucket(rows).rows

    def _bucket(self, rows: int) -> _Bucket:
        if not self.plan.batch_sizes:
            return self._buckets[0]
        for bucket in self._buckets:
            if bucket.rows >= rows:
                return bucket
        raise ValueError(f"a batch of {rows} rows is over the largest CUDA graph bucket")

    def run(self, feeds: Mapping[str, np.ndarray], output_names: Sequence[str]) -> list[np.ndarray]:
        batched = bool(self.plan.batch_sizes)
        rows = len(next(iter(feeds.values()))) if batched else 0
        bucket = self._bucket(rows)
        for tensor in self.plan.inputs:
            value = feeds[tensor.name]
            staged = bucket.staging[tensor.name]
            if value.shape == staged.shape and value.dtype == staged.dtype and value.flags.c_contiguous:
                bucket.inputs[tensor.name].update_inplace(value)  # a full bucket: no padding copy
                continue
            if batched:
                staged[:rows] = value
                staged[rows:] = 0  # pad rows: computed, then dropped
            else:
                staged[...] = value
            bucket.inputs[tensor.name].update_inplace(staged)
        self._session.run_with_iobinding(bucket.binding, bucket.run_options)
        results = []
        for name in output_names:
            host = bucket.outputs[name].numpy()
            host = host[:rows] if batched else host
            results.append(host.copy() if self._copy_outputs else host)
        return results
