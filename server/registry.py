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
from hotwire.server.batcher import Batcher, BatchingPolicy
from hotwire.server.errors import ConfigError, InvalidInput, ModelLoadError, NotFound, Unavailable
from hotwire.server.model_config import Signature, complete, graph_tensors, ort_options
from hotwire.server.repository import ModelSource
from hotwire.server.runner import Instance, create_session, placements
from hotwire.server.validate import validate
from hotwire.server.wire import InferRequest, InferResponse

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

    async def infer(self, request: InferRequest) -> InferResponse:
        valid = validate(request, self.signature, self.name)
        self.inflight += 1
        try:
            future = self.batcher.submit(valid.feeds, valid.rows, valid.shape_key, valid.output_names)
            outputs = await future
        finally:
            self.inflight -= 1
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
                "loaded model %s version %d (%d instance(s) on %s, max_batch_size %d) in %.0f ms",
                source.name, version, len(loaded.instances),
                ",".join(sorted({i.placement.label for i in loaded.instances})),
                loaded.signature.max_batch_size, (time.monotonic() - started) * 1e3,
            )
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
            for instance in instances:
                _warm(instance, signature)
            return config, signature, instances

        config, signature, instances = await asyncio.to_thread(build)
        batcher = Batcher(f"{source.name}:{version}", batching_policy(config), instances,
                          [s.name for s in signature.outputs])
        batcher.start()
        loaded = ModelVersion(source.name, version, config, signature, instances, batcher)
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
            ready = [v for v in entry.versions.values() if v.state is VersionState.READY]
            if not ready:
                reason = entry.reason()
                raise Unavailable(f"model '{name}' has no ready version" + (f": {reason}" if reason else ""))
            return max(ready, key=lambda v: v.version)
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
            self._on_health_change(entry.name, False)


def batching_policy(config: mc.ModelConfig) -> BatchingPolicy:
    batching = config.dynamic_batching
    queue_size = batching.default_queue_policy.max_queue_size
    return BatchingPolicy(
        max_batch_size=config.max_batch_size,
        preferred_batch_sizes=tuple(batching.preferred_batch_size),
        max_queue_delay_s=batching.max_queue_delay_microseconds / 1e6,
        max_queue_size=queue_size if queue_size > 0 else BatchingPolicy.max_queue_size,
        enabled=config.HasField("dynamic_batching"),
    )


def _warm(instance: Instance, signature: Signature) -> None:
    """Run once on zeros so the first client request doesn't pay ORT's first-run allocations."""
    if any(d < 0 for spec in signature.inputs for d in spec.model_dims):
        return  # no shape to warm with; a later model_warmup config can provide one
    batch = (1,) if signature.batched else ()
    feeds = {
        spec.name: (np.full(batch + spec.model_dims, "", dtype=object) if spec.datatype.name == "BYTES"
                    else np.zeros(batch + spec.model_dims, dtype=spec.datatype.numpy))
        for spec in signature.inputs
    }
    try:
        instance.run_sync(feeds, [s.name for s in signature.outputs])
    except Exception as exc:
        raise ModelLoadError(f"warm-up inference on zeros failed: {exc}") from exc
