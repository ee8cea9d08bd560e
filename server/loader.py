"""Build a ready model version from a repository source: sessions, completed config, warm-up, batcher.

Runs the blocking parts (session creation, warm-up runs, kernel compiles) on a worker thread; only the
finished ModelVersion reaches the event loop, so a loading model never slows the ones already serving.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np

from hotwire.proto import model_config_pb2 as mc
from hotwire.server import datatypes, preprocess, wire
from hotwire.server.assembly import BatchAssembler
from hotwire.server.batcher import DEFAULT_MAX_QUEUE_SIZE, Batcher, BatchingPolicy, QueuePolicy
from hotwire.server.cuda_graphs import GraphedBatches, GraphPlan, graph_plan
from hotwire.server.drift import DriftMonitor, ReferenceProfile
from hotwire.server.errors import InvalidInput, ModelLoadError
from hotwire.server.limits import BufferBudget, LoadLimits, Reservation
from hotwire.server.model_config import DriftParameters, Signature, complete, graph_tensors, model_parameters
from hotwire.server.model_version import ModelVersion
from hotwire.server.preprocess import Preprocessor
from hotwire.server.repository import ModelSource
from hotwire.server.runner import INLINE_MAX_COMPUTE_S, Instance, create_session, placements
from hotwire.server.stats import VersionStats

log = logging.getLogger(__name__)


async def load_version(
    source: ModelSource,
    version: int,
    model_file: Path,
    default_max_batch_size: int,
    fingerprint: tuple = (),
    limits: LoadLimits | None = None,
    budget: BufferBudget | None = None,
) -> ModelVersion:
    """A complete version in state LOADING (the registry decides when it serves); `fingerprint` is what it is
    loaded from, so an unchanged reload can keep it. `limits` and `budget` refuse a config that asks for too
    much before the memory is taken: the instance count before any session, the batch buffers after the
    first."""
    assert source.config is not None
    limits = limits or LoadLimits()
    started = time.monotonic()
    declared = source.config
    if not declared.instance_group:
        declared = mc.ModelConfig()
        declared.CopyFrom(source.config)
        declared.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_AUTO)
    if any(group.count < 1 for group in declared.instance_group):
        declared = _counted(declared)
    parameters = model_parameters(declared)
    where = [
        p
        for group in declared.instance_group
        for p in placements(group, parameters.gpu, source.path, declared)
    ]
    if len(where) > limits.max_instances:
        raise ModelLoadError(
            f"instance_group asks for {len(where)} instances, over the server's {limits.max_instances} per "
            "model (--max-model-instances)"
        )
    reservation = Reservation()

    def build() -> tuple[mc.ModelConfig, Signature, list[Instance], Preprocessor | None]:
        # Runs on a worker thread: session creation holds the GIL for long stretches.
        nonlocal reservation
        first, where[0] = create_session(model_file, parameters.ort, where[0])
        sessions = [first]
        config, signature = complete(
            declared,
            source.max_batch_size_given,
            graph_tensors(sessions[0].get_inputs()),
            graph_tensors(sessions[0].get_outputs()),
            default_max_batch_size,
        )
        if config.max_batch_size > limits.max_batch_size:
            sessions[0] = None  # type: ignore[call-overload]  # released before the error is raised
            raise ModelLoadError(
                f"max_batch_size {config.max_batch_size} is over the server's {limits.max_batch_size} "
                "(--max-model-batch-size)"
            )
        if budget is not None:
            reservation = budget.reserve(
                len(where) * buffer_bytes(signature), f"model '{source.name}' version {version}"
            )
        for i in range(1, len(where)):
            session, where[i] = create_session(model_file, parameters.ort, where[i])
            sessions.append(session)
        preprocessor, client_signature = None, signature
        pipelines = preprocess.declaration(parameters.preprocess, source.path)
        if pipelines is not None:
            # Under CUDA graphs preprocessing stays on the host: its output is copied into the graph's fixed
            # device buffers, which a device array from the GPU twins would need a device-to-device copy for.
            on_gpu = _gpu_preprocessing(where) and not parameters.gpu.cuda_graphs
            preprocessor, client_signature = preprocess.build(pipelines, signature, on_gpu)
            _show_client_inputs(config, client_signature, preprocessor.fed_inputs())
        instances = [
            Instance(f"{source.name}-v{version}-{i}", s, p) for i, (s, p) in enumerate(zip(sessions, where))
        ]
        if parameters.gpu.cuda_graphs:
            _capture_cuda_graphs(instances, graph_plan(signature, config, parameters.gpu))
        mode = parameters.execution
        compute_s = [warm(instance, signature, config, source.path) for instance in instances]
        # `auto` runs a tiny model inline only when it has one instance: several instances are asked for to
        # run concurrently, which inline instances (all on the loop thread) cannot.
        single = len(instances) == 1
        for instance, seconds in zip(instances, compute_s):
            tiny = seconds is not None and seconds <= INLINE_MAX_COMPUTE_S
            instance.inline = instance.placement.kind == "cpu" and (
                mode == "inline" or (mode == "auto" and tiny and single)
            )
        return config, client_signature, instances, preprocessor

    try:
        config, signature, instances, preprocessor = await asyncio.to_thread(build)
    except BaseException:
        reservation.release()
        raise
    try:
        policy = batching_policy(config)
    except ModelLoadError:
        reservation.release()
        for instance in instances:
            instance.close()
        raise
    ragged = [s.name for s in signature.inputs if s.ragged]
    dynamic_axes = {
        s.name: frozenset(i + 1 for i, d in enumerate(s.model_dims) if d < 0) for s in signature.outputs
    }
    assemblers = [
        BatchAssembler(config.max_batch_size, ragged, dynamic_axes, preprocessor) for _ in instances
    ]
    stats = VersionStats()
    batcher = Batcher(
        f"{source.name}:{version}",
        policy,
        instances,
        [s.name for s in signature.outputs],
        assemblers,
        on_batch=lambda result: stats.record_batch(result.rows, result.requests, result.times),
    )
    try:
        drift = drift_monitor(parameters.drift, signature, source.path)
    except ModelLoadError:
        reservation.release()
        for instance in instances:
            instance.close()
        raise
    batcher.start()
    return ModelVersion(
        source.name,
        version,
        config,
        signature,
        instances,
        batcher,
        stats,
        preprocessor=preprocessor,
        drift=drift,
        fingerprint=fingerprint,
        load_seconds=time.monotonic() - started,
        buffers=reservation,
    )


def buffer_bytes(signature: Signature) -> int:
    """One instance's batch buffers at max_batch_size: the rows of every input and output (a dynamic dim
    counted as 1, a BYTES element as a pointer). An estimate of what batching preallocates and ONNX Runtime
    allocates for a full batch, known before either happens."""
    rows = max(1, signature.max_batch_size)
    total = 0
    for spec in (*signature.inputs, *signature.outputs):
        elements = 1
        for dim in spec.dims:
            elements *= max(1, dim)
        total += elements * (spec.datatype.itemsize or 8)
    return rows * total


def batching_policy(config: mc.ModelConfig) -> BatchingPolicy:
    """Triton's dynamic_batching settings as a frozen policy (no dynamic_batching: every request runs
    alone)."""
    batching = config.dynamic_batching
    levels = max(1, batching.priority_levels)

    def queue_policy(policy: mc.ModelQueuePolicy) -> QueuePolicy:
        return QueuePolicy(
            max_queue_size=policy.max_queue_size if policy.max_queue_size > 0 else DEFAULT_MAX_QUEUE_SIZE,
            default_timeout_s=policy.default_timeout_microseconds / 1e6,
            allow_timeout_override=policy.allow_timeout_override,
            delay_on_timeout=policy.timeout_action == mc.ModelQueuePolicy.DELAY,
        )

    default = queue_policy(batching.default_queue_policy)
    per_level = tuple(
        queue_policy(batching.priority_queue_policy[level])
        if level in batching.priority_queue_policy
        else default
        for level in range(1, levels + 1)
    )
    if batching.default_priority_level > levels:
        raise ModelLoadError(
            f"dynamic_batching: default_priority_level {batching.default_priority_level} exceeds "
            f"priority_levels {levels}"
        )
    preferred = tuple(batching.preferred_batch_size)
    too_big = [size for size in preferred if size > config.max_batch_size or size < 1]
    if too_big and config.max_batch_size > 0:
        raise ModelLoadError(
            f"dynamic_batching: preferred_batch_size {too_big} outside 1..{config.max_batch_size}"
        )
    return BatchingPolicy(
        max_batch_size=config.max_batch_size,
        preferred_batch_sizes=preferred,
        max_queue_delay_s=batching.max_queue_delay_microseconds / 1e6,
        enabled=config.HasField("dynamic_batching"),
        preserve_ordering=batching.preserve_ordering,
        priority_levels=batching.priority_levels,
        default_priority_level=batching.default_priority_level,
        queue_policies=per_level,
    )


def drift_monitor(parameters: DriftParameters, signature: Signature, model_dir: Path) -> DriftMonitor | None:
    """A drift monitor when config parameter `drift_monitoring` is true or `drift_reference.npz` exists in the
    model's directory (the reference; else it is captured from the first `drift_reference_rows` rows).
    Parameters `drift_window_rows` and `drift_reference_rows` size the windows (default 1000 each)."""
    try:
        reference = ReferenceProfile.for_model(model_dir)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"drift reference in {model_dir}: {exc}") from None
    if reference is None and not parameters.monitoring:
        return None
    return DriftMonitor(
        [s.name for s in signature.inputs],
        [s.name for s in signature.outputs],
        window_rows=parameters.window_rows,
        reference_rows=parameters.reference_rows,
        reference=reference,
    )


def _counted(config: mc.ModelConfig) -> mc.ModelConfig:
    """instance_group counts as Triton reads them: an unset count is 1 instance, a negative one an error."""
    counted = mc.ModelConfig()
    counted.CopyFrom(config)
    for group in counted.instance_group:
        if group.count < 0:
            raise ModelLoadError(f"instance_group '{group.name}': count {group.count} must be >= 1")
        group.count = group.count or 1
    return counted


def _capture_cuda_graphs(instances: list[Instance], plan: GraphPlan) -> None:
    """Give each GPU instance its graph buckets; warm-up (next) runs each bucket, which captures its graph."""
    for instance in instances:
        if instance.placement.kind != "gpu":
            log.warning(
                "%s runs on the CPU (KIND_AUTO found no usable GPU): optimization.cuda.graphs does not apply",
                instance.name,
            )
            continue
        instance.graphs = GraphedBatches(instance.session, "cuda", instance.placement.device_id, plan)


def _gpu_preprocessing(where: list) -> bool:
    """GPU twins for image preprocessing: every instance on the same CUDA device and numba.cuda usable
    there."""
    devices = {p.device_id for p in where if p.kind == "gpu"}
    if len(devices) != 1 or any(p.kind != "gpu" for p in where):
        return False
    from hotwire.kernels import cuda_image

    return cuda_image.available()


def _show_client_inputs(config: mc.ModelConfig, signature: Signature, fed: set[str]) -> None:
    """ModelConfig shows what clients send: pipeline inputs replace the ONNX inputs they feed."""
    kept = [entry for entry in config.input if entry.name not in fed]
    del config.input[:]
    config.input.extend(kept)
    for spec in signature.inputs:
        if spec.name not in {entry.name for entry in config.input}:
            config.input.add(
                name=spec.name, data_type=mc.DataType.Value(spec.datatype.config), dims=spec.dims
            )


def warm(instance: Instance, signature: Signature, config: mc.ModelConfig, model_dir: Path) -> float | None:
    """Run the warm-up inputs so no client pays first-run costs (ORT allocations, per-shape kernel selection);
    returns the median compute time of the largest batch, or None when there was nothing to warm with.

    `model_warmup` in the config is honoured (zero_data, random_data, input_data_file under <model>/warmup/),
    and its failure fails the load, as in Triton. Otherwise hotwire warms on its own, with zeros
    (empty strings for BYTES) for every batch-size bucket (1, the preferred sizes, max_batch_size) when the
    dims are known; Triton does not warm such a model at all, so a model those inputs don't suit
    (one that parses its strings, say) still loads: the failure is logged and the model runs on its thread,
    unwarmed.
    """
    samples: list[tuple[int, dict[str, np.ndarray], int]] = []  # (rows, feeds, repeats)
    if config.model_warmup:
        for entry in config.model_warmup:
            feeds = {
                name: _warmup_tensor(name, spec, entry.batch_size, signature, model_dir)
                for name, spec in entry.inputs.items()
            }
            samples.append((max(1, entry.batch_size), feeds, max(1, entry.count)))
    elif not any(d < 0 for spec in signature.inputs for d in spec.model_dims):
        buckets = (
            sorted({1, *config.dynamic_batching.preferred_batch_size, signature.max_batch_size})
            if signature.batched
            else [0]
        )
        for rows in buckets:
            batch = (rows,) if rows else ()
            samples.append(
                (
                    rows,
                    {
                        spec.name: _filled(batch + spec.model_dims, spec.datatype.numpy, "zero")
                        for spec in signature.inputs
                    },
                    1,
                )
            )
    if not samples:
        return None
    names = [s.name for s in signature.outputs]
    largest: list[float] = []
    for rows, feeds, repeats in sorted(samples, key=lambda sample: sample[0]):
        timings = []
        try:
            for _ in range(max(repeats, 5)):
                started = time.perf_counter()
                instance.run_sync(feeds, names)
                timings.append(time.perf_counter() - started)
        except Exception as exc:
            if config.model_warmup:
                raise ModelLoadError(f"warm-up inference (batch {rows}) failed: {exc}") from exc
            log.warning(
                "%s: hotwire's default warm-up (zeros, empty strings; batch %d) failed, so the model loads "
                "unwarmed; give it a model_warmup that suits it: %s",
                instance.name,
                rows,
                exc,
            )
            return None
        largest = timings
    return sorted(largest)[len(largest) // 2]


def _filled(shape: tuple[int, ...], dtype: np.dtype, kind: str) -> np.ndarray:
    if dtype.kind == "O":
        return np.full(shape, "", dtype=object)
    if kind == "zero":
        return np.zeros(shape, dtype=dtype)
    rng = np.random.default_rng(0)
    if dtype.kind == "f":
        return rng.random(shape).astype(dtype)
    if dtype.kind == "b":
        return rng.integers(0, 2, shape).astype(dtype)
    return rng.integers(0, min(np.iinfo(dtype).max, 127), shape, endpoint=True).astype(dtype)


def _warmup_tensor(
    name: str, spec: mc.ModelWarmup.Input, batch_size: int, signature: Signature, model_dir: Path
) -> np.ndarray:
    tensor = signature.input(name)
    if tensor is None:
        raise ModelLoadError(f"model_warmup input '{name}' is not an input of the model")
    shape = ((max(1, batch_size),) if signature.batched else ()) + tuple(spec.dims)
    dtype = tensor.datatype.numpy
    kind = spec.WhichOneof("input_data_type")
    if kind == "input_data_file":
        path = model_dir / "warmup" / spec.input_data_file
        try:
            if dtype.kind == "O":  # BYTES: Triton's raw layout, length-prefixed elements
                data = np.array(wire.bytes_elements(name, memoryview(path.read_bytes())), dtype=object)
            else:
                data = np.fromfile(path, dtype=dtype)
        except (OSError, InvalidInput) as exc:
            raise ModelLoadError(f"model_warmup input '{name}': cannot read {path}: {exc}") from None
        count = datatypes.element_count(shape)
        if data.size != count // max(1, shape[0] if signature.batched else 1) and data.size != count:
            raise ModelLoadError(
                f"model_warmup input '{name}': {path} holds {data.size} elements for shape {list(shape)}"
            )
        return np.broadcast_to(data.reshape(shape[1:] if data.size != count else shape), shape).copy()
    return _filled(shape, dtype, "random" if kind == "random_data" else "zero")
