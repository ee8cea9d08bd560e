"""Every loaded model version, its state, and the routing of requests to it.

The Registry is the only owner of `ModelVersion`s and of the routing table; it runs on the event loop, and blocking
load work (session creation, warm-up) goes to a thread.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from hotwire.proto import model_config_pb2 as mc
from hotwire.server import repository
from hotwire.kernels import batching as batching_kernels
from hotwire.server.assembly import BatchAssembler
from hotwire.server.batcher import DEFAULT_MAX_QUEUE_SIZE, Batcher, BatchingPolicy, QueuePolicy
from hotwire.server.errors import (ConfigError, DeadlineExceeded, HotwireError, InvalidInput, ModelLoadError, NotFound,
                                   ResourceExhausted, Unavailable)
from hotwire.server.model_config import Signature, complete, execution_mode, graph_tensors, ort_options
from hotwire.server.repository import ModelSource
from hotwire.server.runner import INLINE_MAX_COMPUTE_S, Instance, create_session, placements
from hotwire.server.stats import VersionStats
from hotwire.server.validate import PlanCache
from hotwire.server.wire import InferRequest, InferResponse, ResponseEncoder

log = logging.getLogger(__name__)


class VersionState(enum.Enum):
    LOADING = "LOADING"
    WARMING = "WARMING"
    READY = "READY"
    DRAINING = "DRAINING"
    UNLOADED = "UNLOADED"
    FAILED = "FAILED"


class ModelVersion:
    """One loaded version: owns its signature, batcher, instances and in-flight count."""

    def __init__(self, name: str, version: int, config: mc.ModelConfig, signature: Signature,
                 instances: list[Instance], batcher: Batcher) -> None:
        self.name = name
        self.version = version
        self.version_str = str(version)
        self.config = config
        self.signature = signature
        self.instances = instances
        self.batcher = batcher
        self.state = VersionState.LOADING
        self.inflight = 0
        self.stats = VersionStats()
        self.encoder = ResponseEncoder(name, self.version_str)
        self._plans = PlanCache(signature, name)

    async def infer(self, request: InferRequest) -> InferResponse:
        started = time.monotonic()
        self.inflight += 1
        ok = False
        queue_s = compute_s = 0.0
        reason = "OTHER"
        try:
            valid = self._plans.validate(request)
            done = self.batcher.run_now(valid.feeds, valid.rows, valid.output_names, valid.priority)
            if done is not None:
                outputs, compute_s = done
            else:
                item = self.batcher.submit(valid.feeds, valid.rows, valid.shape_key, valid.output_names,
                                           valid.priority, valid.timeout_us)
                try:
                    outputs = await item.future
                finally:
                    timings = item.timings
                    queue_s = timings.get("batched", timings["queued"]) - timings["queued"]
                    compute_s = timings.get("compute_s", 0.0)
            ok = True
        except (ResourceExhausted, DeadlineExceeded):
            reason = "REJECTED"
            raise
        except asyncio.CancelledError:
            reason = "CANCELED"
            raise
        except HotwireError:
            raise
        except Exception:
            reason = "BACKEND"  # anything else comes out of ONNX Runtime
            raise
        finally:
            self.inflight -= 1
            self.stats.record_request(ok, time.monotonic() - started, queue_s, compute_s, reason)
        return InferResponse(self.name, self.version_str, request.id, list(valid.output_names), outputs)

    async def unload(self) -> None:
        self.state = VersionState.DRAINING
        await self.batcher.close()
        for instance in self.instances:
            await asyncio.to_thread(instance.close)
        self.state = VersionState.UNLOADED


@dataclass
class ModelEntry:
    """A model name in the repository: its ready versions, and the reason when it (or a version) failed to load."""

    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)
    failures: dict[int, str] = field(default_factory=dict)  # version -> reason (version -1: the whole model)
    serving: ModelVersion | None = None  # what an unpinned request gets: the highest ready version

    def refresh_serving(self) -> None:
        ready = [v for v in self.versions.values() if v.state is VersionState.READY]
        self.serving = max(ready, key=lambda v: v.version) if ready else None

    def reason(self) -> str:
        return "; ".join(
            (f"version {v}: {msg}" if v >= 0 else msg) for v, msg in sorted(self.failures.items())
        )


HealthCallback = Callable[[str, bool], None]


class Registry:
    def __init__(self, default_max_batch_size: int, on_health_change: HealthCallback | None = None) -> None:
        self._models: dict[str, ModelEntry] = {}
        self._default_max_batch_size = default_max_batch_size
        self._on_health_change = on_health_change or (lambda name, serving: None)

    # ----- loading -------------------------------------------------------------------------------------------

    async def load_repository(self, root: Path) -> None:
        """Load every model of the repository; a model that fails is recorded and never stops the others."""
        sources = repository.scan(root)
        for source in sources.values():
            await self.load_model(source)

    async def load_model(self, source: ModelSource) -> ModelEntry:
        entry = ModelEntry(source.name)
        self._models[source.name] = entry
        if source.error or source.config is None:
            entry.failures[-1] = source.error or "no configuration"
            log.error("model %s failed to load: %s", source.name, entry.failures[-1])
            self._on_health_change(source.name, False)
            return entry
        for version, model_file in sorted(source.versions.items()):
            started = time.monotonic()
            try:
                loaded = await self._load_version(source, version, model_file)
            except (ModelLoadError, ConfigError) as exc:
                entry.failures[version] = str(exc)
                log.error("model %s version %d failed to load: %s", source.name, version, exc)
                continue
            entry.versions[version] = loaded
            log.info(
                "loaded model %s version %d (%d instance(s) on %s%s, max_batch_size %d) in %.0f ms",
                source.name, version, len(loaded.instances),
                ",".join(sorted({i.placement.label for i in loaded.instances})),
                ", inline" if any(i.inline for i in loaded.instances) else "",
                loaded.signature.max_batch_size, (time.monotonic() - started) * 1e3,
            )
        entry.refresh_serving()
        self._on_health_change(source.name, bool(entry.versions))
        return entry

    async def _load_version(self, source: ModelSource, version: int, model_file: Path) -> ModelVersion:
        assert source.config is not None
        declared = source.config
        if not declared.instance_group:
            declared = mc.ModelConfig()
            declared.CopyFrom(source.config)
            declared.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_AUTO)
        options = ort_options(declared)
        where = [p for group in declared.instance_group for p in placements(group)]

        def build() -> tuple[mc.ModelConfig, Signature, list[Instance]]:
            # Runs on a worker thread: session creation holds the GIL for long stretches.
            sessions = [create_session(model_file, options, p) for p in where]
            config, signature = complete(
                declared, source.max_batch_size_given,
                graph_tensors(sessions[0].get_inputs()), graph_tensors(sessions[0].get_outputs()),
                self._default_max_batch_size,
            )
            instances = [
                Instance(f"{source.name}-v{version}-{i}", s, p) for i, (s, p) in enumerate(zip(sessions, where))
            ]
            mode = execution_mode(config)
            compute_s = [_warm(instance, signature) for instance in instances]
            for instance, seconds in zip(instances, compute_s):
                tiny = seconds is not None and seconds <= INLINE_MAX_COMPUTE_S
                instance.inline = instance.placement.kind == "cpu" and (mode == "inline" or (mode == "auto" and tiny))
            if signature.batched:
                batching_kernels.warm()  # compile or load from cache now, never on a request
            return config, signature, instances

        config, signature, instances = await asyncio.to_thread(build)
        try:
            policy = batching_policy(config)
        except ModelLoadError:
            for instance in instances:
                instance.close()
            raise
        ragged = [s.name for s in signature.inputs if s.ragged]
        dynamic_axes = {s.name: frozenset(i + 1 for i, d in enumerate(s.model_dims) if d < 0) for s in signature.outputs}
        assemblers = [BatchAssembler(config.max_batch_size, ragged, dynamic_axes) for _ in instances]
        stats = VersionStats()
        batcher = Batcher(f"{source.name}:{version}", policy, instances, [s.name for s in signature.outputs], assemblers,
                          on_batch=lambda result: stats.record_batch(result.rows, result.requests, result.compute_s))
        batcher.start()
        loaded = ModelVersion(source.name, version, config, signature, instances, batcher)
        loaded.stats = stats
        loaded.state = VersionState.READY
        return loaded

    # ----- routing -------------------------------------------------------------------------------------------

    def entry(self, name: str) -> ModelEntry:
        entry = self._models.get(name)
        if entry is None:
            raise NotFound(f"unknown model '{name}'")
        return entry

    def route(self, name: str, version: str = "") -> ModelVersion:
        """The ready version serving `name` (the highest ready one when `version` is empty)."""
        entry = self.entry(name)
        if not version:
            serving = entry.serving
            if serving is None or serving.state is not VersionState.READY:
                reason = entry.reason()
                raise Unavailable(f"model '{name}' has no ready version" + (f": {reason}" if reason else ""))
            return serving
        if not version.isdigit():
            raise InvalidInput(f"model_version '{version}' is not an integer version")
        loaded = entry.versions.get(int(version))
        if loaded is None:
            failure = entry.failures.get(int(version))
            if failure:
                raise Unavailable(f"model '{name}' version {version} failed to load: {failure}")
            raise NotFound(f"model '{name}' has no version {version}; loaded: {sorted(entry.versions)}")
        if loaded.state is not VersionState.READY:
            raise Unavailable(f"model '{name}' version {version} is {loaded.state.value}")
        return loaded

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.route(name, version)
        except (NotFound, Unavailable, InvalidInput):
            return False
        return True

    def versions(self) -> list[ModelVersion]:
        """Every loaded version of every model."""
        return [v for entry in self._models.values() for v in entry.versions.values()]

    def models(self) -> list[ModelEntry]:
        return [self._models[name] for name in sorted(self._models)]

    def all_ready(self) -> bool:
        """Server readiness: every model in the repository has a ready version."""
        return all(entry.versions for entry in self._models.values())

    # ----- shutdown ------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Drain every batcher (queued requests finish), then release the sessions."""
        versions = [v for entry in self._models.values() for v in entry.versions.values()]
        await asyncio.gather(*(v.unload() for v in versions))
        for entry in self._models.values():
            entry.refresh_serving()
        for entry in self._models.values():
            self._on_health_change(entry.name, False)


def batching_policy(config: mc.ModelConfig) -> BatchingPolicy:
    """Triton's dynamic_batching settings as a frozen policy (no dynamic_batching: every request runs alone)."""
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
        queue_policy(batching.priority_queue_policy[level]) if level in batching.priority_queue_policy else default
        for level in range(1, levels + 1)
    )
    if batching.default_priority_level > levels:
        raise ModelLoadError(
            f"dynamic_batching: default_priority_level {batching.default_priority_level} exceeds priority_levels {levels}"
        )
    preferred = tuple(batching.preferred_batch_size)
    too_big = [size for size in preferred if size > config.max_batch_size or size < 1]
    if too_big and config.max_batch_size > 0:
        raise ModelLoadError(f"dynamic_batching: preferred_batch_size {too_big} outside 1..{config.max_batch_size}")
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


def _warm(instance: Instance, signature: Signature) -> float | None:
    """Run on zeros so no client pays ORT's first-run allocations; returns the median compute time of the largest
    batch (None when the inputs have dynamic dims and no shape to warm with)."""
    if any(d < 0 for spec in signature.inputs for d in spec.model_dims):
        return None
    timings: list[float] = []
    for rows in ((1, signature.max_batch_size) if signature.batched else (None,)):
        batch = (rows,) if rows is not None else ()
        feeds = {
            spec.name: (np.full(batch + spec.model_dims, "", dtype=object) if spec.datatype.name == "BYTES"
                        else np.zeros(batch + spec.model_dims, dtype=spec.datatype.numpy))
            for spec in signature.inputs
        }
        names = [s.name for s in signature.outputs]
        timings = []
        try:
            for _ in range(5):
                started = time.perf_counter()
                instance.run_sync(feeds, names)
                timings.append(time.perf_counter() - started)
        except Exception as exc:
            raise ModelLoadError(f"warm-up inference on zeros (batch {rows}) failed: {exc}") from exc
    return sorted(timings)[len(timings) // 2]
