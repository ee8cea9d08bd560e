"""Every loaded model version, its state, and the routing of requests to it.

The Registry is the only owner of ModelVersions and of each model's routing table (stable, canary, shadow and
standby versions). It runs on the event loop; blocking load work happens in `loader` on a thread.

Swaps are lossless: a new version loads and warms while the old one serves, then one assignment flips the
routing table. Routing and submitting a request happen without an await in between, so after a flip no request
can reach the old version; the requests it already holds finish on it (drain), and its sessions are released
at in-flight 0.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hotwire.server import repository
from hotwire.server.errors import ConfigError, InvalidInput, ModelLoadError, NotFound, Unavailable
from hotwire.server.fallback import GuardCounts, ModelGuard, constant_outputs
from hotwire.server.limits import BufferBudget, LoadLimits
from hotwire.server.loader import load_version
from hotwire.server.metrics import GuardView
from hotwire.server.model_config import FallbackParameters, fallback_parameters, traffic_policy
from hotwire.server.model_version import ModelVersion, VersionState
from hotwire.server.repository import ModelSource
from hotwire.server.tasks import BackgroundTasks
from hotwire.server.traffic import (
    GuardWindow,
    ShadowComparison,
    TrafficPolicy,
    apply_update,
    compare,
    goes_to_canary,
)
from hotwire.server.wire import InferRequest, InferResponse

log = logging.getLogger(__name__)


@dataclass
class LifecycleEvents:
    """Lifecycle event counts: in total (the fields), and per (model, version, event) for the metrics, whose
    alerts name the model. Version "" is the whole model (a load that failed before any version was known)."""

    swaps: int = 0
    rollbacks: int = 0
    guard_rollbacks: int = 0
    load_failures: int = 0
    by_version: dict[tuple[str, str, str], int] = field(default_factory=dict)

    def add(self, event: str, model: str, version: int) -> None:
        total = {
            "swap": "swaps",
            "rollback": "rollbacks",
            "guard_rollback": "guard_rollbacks",
            "load_failure": "load_failures",
        }[event]
        setattr(self, total, getattr(self, total) + 1)
        key = (model, str(version) if version >= 0 else "", event)
        self.by_version[key] = self.by_version.get(key, 0) + 1


@dataclass
class ModelEntry:
    """One model name: its loaded versions, its routing table, and why it (or a version) failed to load."""

    name: str
    versions: dict[int, ModelVersion] = field(default_factory=dict)  # READY and STANDBY versions
    failures: dict[int, str] = field(default_factory=dict)  # version -> reason (version -1: the whole model)
    policy: TrafficPolicy = TrafficPolicy()
    stable: ModelVersion | None = None  # what an unpinned request gets, unless the canary takes it
    canary: ModelVersion | None = None
    shadow: ModelVersion | None = None
    rollback_to: int | None = None  # set by rollback: stable stays there until the next load
    guard: GuardWindow = field(default_factory=GuardWindow)
    guard_checked: float = 0.0  # when the guard last evaluated its window
    unloaded: bool = False  # explicitly unloaded (or removed from the repository): not counted for readiness
    fingerprint: tuple = ()  # of the repository directory it was loaded from (poll mode compares)
    loading: bool = False  # a load of it is under way

    def reason(self) -> str:
        return "; ".join(
            (f"version {v}: {msg}" if v >= 0 else msg) for v, msg in sorted(self.failures.items())
        )

    def resolve_routes(self) -> None:
        """Point stable/canary/shadow at loaded versions, from the policy (and a rollback, if any). Changes no
        version's state: the caller serves a standby version it makes stable before it calls this."""
        ready = {v: m for v, m in self.versions.items() if m.serving}
        active = sorted(v for v, m in ready.items() if m.state is VersionState.READY)
        wanted = self.rollback_to if self.rollback_to is not None else self.policy.stable
        stable = wanted if wanted in ready else (active[-1] if active else None)
        self.stable = ready.get(stable) if stable is not None else None
        canary = self.policy.canary
        self.canary = (
            ready.get(canary)
            if canary is not None and canary != stable and self.rollback_to is None
            else None
        )
        shadow = self.policy.shadow
        self.shadow = ready.get(shadow) if shadow is not None and shadow != stable else None


HealthCallback = Callable[[str, bool], None]
GUARD_CHECK_INTERVAL_S = 0.1


class Registry:
    def __init__(
        self,
        default_max_batch_size: int,
        on_health_change: HealthCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        load_limits: LoadLimits | None = None,
    ) -> None:
        self._models: dict[str, ModelEntry] = {}
        self._default_max_batch_size = default_max_batch_size
        self._load_limits = load_limits or LoadLimits()
        self.buffer_budget = BufferBudget(self._load_limits.max_buffer_bytes)
        self._on_health_change = on_health_change or (lambda name, serving: None)
        self._clock = clock
        self._rng = random.Random()
        self._locks: dict[str, asyncio.Lock] = {}
        self._background = BackgroundTasks("registry")  # draining versions, shadow requests
        # routed away, still finishing requests (metrics keep reporting)
        self.draining: set[ModelVersion] = set()
        self.events = LifecycleEvents()
        self.shadow_results: dict[str, list[ShadowComparison]] = {}  # model -> recent comparisons (bounded)
        self.shadow_counts: dict[str, int] = {}  # model -> comparisons ever made
        # model -> its fallback/breaker guard, only for models that configure one. The data plane holds this
        # very dict: it is mutated in place, never rebound.
        self.guards: dict[str, ModelGuard] = {}
        self._guard_counts: dict[str, GuardCounts] = {}  # outlive a guard, so metrics never go down

    # ----- loading
    # -------------------------------------------------------------------------------------------

    async def load_repository(self, root: Path, only: list[str] | None = None) -> None:
        """Load the repository's models (or only those named); one that fails never stops the others."""
        sources = repository.scan(root)
        for name in only if only is not None else list(sources):
            if name not in sources:
                log.error("model %s: not in the repository %s", name, root)
                self._entry_for(name).failures[-1] = f"no directory '{name}' in the model repository"
                continue
            await self.load(sources[name])

    def _entry_for(self, name: str) -> ModelEntry:
        entry = self._models.get(name)
        if entry is None:
            entry = self._models[name] = ModelEntry(name)
        return entry

    async def load(self, source: ModelSource) -> ModelEntry:
        """(Re)load a model. New or changed versions load and warm while the current ones keep serving; then
        the routing table flips in one step. On any failure the current versions stay as they were."""
        lock = self._locks.setdefault(source.name, asyncio.Lock())
        async with lock:
            entry = self._entry_for(source.name)
            entry.loading = True
            try:
                return await self._load_locked(source)
            finally:
                entry.loading = False

    async def _load_locked(self, source: ModelSource) -> ModelEntry:
        entry = self._entry_for(source.name)
        entry.unloaded = False
        entry.failures = {}  # this attempt's reasons only: an earlier attempt's would repeat in its errors
        if entry.stable is None:
            self._on_health_change(entry.name, False)  # loading: NOT_SERVING until a version is ready
        entry.fingerprint = repository.fingerprint(source.path) if source.path.exists() else ()
        if source.error or source.config is None:
            return self._load_failed(entry, -1, source.error or "no configuration")
        try:
            policy = traffic_policy(source.config)
        except InvalidInput as exc:
            return self._load_failed(entry, -1, f"config parameters: {exc}")
        try:
            fallback = fallback_parameters(source.config)
        except ConfigError as exc:
            return self._load_failed(entry, -1, str(exc))
        fresh: dict[int, ModelVersion] = {}
        for version, model_file in sorted(source.versions.items()):
            started = time.monotonic()
            fingerprint = repository.version_fingerprint(source, version)
            current = entry.versions.get(version)
            if current is not None and current.fingerprint == fingerprint:
                fresh[version] = current  # unchanged: keep the loaded, warm one
                continue
            try:
                loaded = await load_version(
                    source,
                    version,
                    model_file,
                    self._default_max_batch_size,
                    fingerprint,
                    self._load_limits,
                    self.buffer_budget,
                )
                if fallback.response is not None:
                    try:  # the constant response against this version's outputs, before it can serve
                        constant_outputs(fallback, loaded.signature, source.name)
                    except ConfigError:
                        await loaded.unload()
                        raise
            except Exception as exc:  # any failure fails this model only, never the load of the others
                for version_loaded in fresh.values():
                    if version_loaded not in entry.versions.values():
                        await version_loaded.unload()
                if not isinstance(exc, (ModelLoadError, ConfigError)):
                    log.debug("unexpected load failure of %s version %d", source.name, version, exc_info=True)
                    return self._load_failed(entry, version, f"{type(exc).__name__}: {exc}")
                return self._load_failed(entry, version, str(exc))
            fresh[version] = loaded
            log.info(
                "loaded model %s version %d (%d instance(s) on %s%s, max_batch_size %d) in %.0f ms",
                source.name,
                version,
                len(loaded.instances),
                ",".join(sorted({i.placement.label for i in loaded.instances})),
                ", inline" if any(i.inline for i in loaded.instances) else "",
                loaded.signature.max_batch_size,
                (time.monotonic() - started) * 1e3,
                extra={"event": "model_loaded", "model": source.name, "version": version},
            )
        self._flip(entry, fresh, policy)
        self._guard(entry.name, fallback)
        return entry

    def _guard(self, name: str, parameters: FallbackParameters | None) -> None:
        """A loaded model's guard, new at each load (its breaker starts closed), or none."""
        if parameters is None or not parameters.configured:
            self.guards.pop(name, None)
            return
        counts = self._guard_counts.setdefault(name, GuardCounts())
        self.guards[name] = ModelGuard(name, parameters, counts, self._clock)

    def guard_views(self) -> list[GuardView]:
        """Every guarded model's fallback and breaker numbers, for the metrics."""
        return [guard.view() for guard in self.guards.values()]

    def _load_failed(self, entry: ModelEntry, version: int, reason: str) -> ModelEntry:
        entry.failures[version] = reason
        self.events.add("load_failure", entry.name, version)
        where = {"version": version} if version >= 0 else {}  # no version: the key is left out, never -1
        if entry.versions:
            log.error(
                "model %s%s failed to load, the loaded versions %s keep serving: %s",
                entry.name,
                f" version {version}" if version >= 0 else "",
                sorted(entry.versions),
                reason,
                extra={"event": "load_failed", "model": entry.name, **where},
            )
        else:
            log.error(
                "model %s%s failed to load: %s",
                entry.name,
                f" version {version}" if version >= 0 else "",
                reason,
                extra={"event": "load_failed", "model": entry.name, **where},
            )
            self._on_health_change(entry.name, False)
        return entry

    def _flip(self, entry: ModelEntry, fresh: dict[int, ModelVersion], policy: TrafficPolicy) -> None:
        """Make `fresh` the model's versions in one step; superseded ones go to standby or drain and
        unload."""
        before = entry.stable
        superseded = [v for number, v in entry.versions.items() if fresh.get(number) is not v]
        # what the version policy selects serves, even one a rollback set aside
        for version in fresh.values():
            version.serve()
        kept = (
            sorted((v for v in superseded if v.version not in fresh), key=lambda v: v.version)[
                -policy.standby :
            ]
            if policy.standby > 0
            else []
        )
        for version in kept:
            if version.version == policy.stable:  # the config names a superseded version as stable: it serves
                version.serve()
            else:
                version.stand_by()
        entry.versions = {**{v.version: v for v in kept}, **fresh}
        entry.failures = {}
        entry.policy = policy
        entry.rollback_to = None
        entry.guard.clear()
        entry.resolve_routes()
        for version in superseded:
            if version not in kept:
                self._drain(version)
        if before is not None and entry.stable is not before:
            after = entry.stable.version if entry.stable else -1
            self.events.add("swap", entry.name, after)
            log.info(
                "model %s: traffic flipped from version %d to %d",
                entry.name,
                before.version,
                after,
                extra={"event": "swap", "model": entry.name, **({"version": after} if after >= 0 else {})},
            )
        self._on_health_change(entry.name, entry.stable is not None)

    def _drain(self, version: ModelVersion) -> None:
        version.drain()
        self._background.spawn(self._unload_logged(version), name=f"drain {version.name}:{version.version}")

    async def _unload_logged(self, version: ModelVersion) -> None:
        self.draining.add(version)
        try:
            await version.unload()
        finally:
            self.draining.discard(version)
        log.info(
            "model %s version %d drained and unloaded",
            version.name,
            version.version,
            extra={"event": "unloaded", "model": version.name, "version": version.version},
        )

    async def unload(self, name: str) -> None:
        """Stop routing to every version of the model, drain them, release their sessions."""
        entry = self.entry(name)
        async with self._locks.setdefault(name, asyncio.Lock()):
            versions = list(entry.versions.values())
            entry.versions = {}
            entry.stable = entry.canary = entry.shadow = None
            entry.failures = {-1: "unloaded"}
            entry.unloaded = True
            entry.fingerprint = ()  # poll mode: the same files coming back are a new load
            self._guard(name, None)
            self._on_health_change(name, False)
            await asyncio.gather(*(v.unload() for v in versions))
            log.info("model %s unloaded", name, extra={"event": "unloaded", "model": name})

    # ----- rollback and traffic
    # ------------------------------------------------------------------------------

    async def rollback(
        self, name: str, to: int | None = None, reload: Callable[[int], ModelSource] | None = None
    ) -> tuple[int, str]:
        """Send a model's traffic back to an earlier version: (version, "standby" | "reloaded").

        A version kept in standby is flipped to at once; otherwise it is loaded again from the repository."""
        entry = self.entry(name)
        current = entry.stable.version if entry.stable else None
        standby = sorted(v for v, m in entry.versions.items() if m.state is VersionState.STANDBY)
        if to is None:
            older = [v for v in sorted(entry.versions) if current is None or v < current]
            if not older and reload is None:
                raise Unavailable(f"model '{name}': no earlier version loaded to roll back to")
            if older:
                to = older[-1]
            else:  # the newest loadable version on disk below the current one (numbers may have gaps)
                assert reload is not None
                earlier = [v for v in reload(current or 0).on_disk if current is None or v < current]
                to = next((v for v in reversed(earlier) if v in reload(v).versions), None)
                if to is None:
                    raise Unavailable(f"model '{name}': no earlier version with a model file to roll back to")
        if to in entry.versions:
            entry.versions[to].serve()
            entry.rollback_to = to
            entry.resolve_routes()
            if entry.stable is not None and current is not None and current != to:
                previous = entry.versions.get(current)
                if previous is not None:
                    previous.stand_by()
            self.events.add("rollback", name, to)
            log.info(
                "model %s: rolled back from version %s to %d (%s)",
                name,
                current,
                to,
                "standby" if to in standby else "loaded",
                extra={"event": "rollback", "model": name, "version": to},
            )
            return to, "standby"
        if reload is None:
            raise NotFound(f"model '{name}' has no version {to} loaded and none to reload")
        async with self._locks.setdefault(name, asyncio.Lock()):
            if to not in entry.versions:  # checked again under the lock: a load may have brought it meanwhile
                source = reload(to)
                if to not in source.versions:
                    raise NotFound(f"model '{name}': version {to} is not in the repository")
                try:
                    loaded = await load_version(
                        source,
                        to,
                        source.versions[to],
                        self._default_max_batch_size,
                        repository.version_fingerprint(source, to),
                        self._load_limits,
                        self.buffer_budget,
                    )
                except (ModelLoadError, ConfigError) as exc:
                    raise Unavailable(f"model '{name}': version {to} could not be reloaded: {exc}") from None
                entry.versions[to] = loaded
            entry.versions[to].serve()
            entry.rollback_to = to
            entry.resolve_routes()
            if current is not None and current in entry.versions and current != to:
                entry.versions[current].stand_by()
        self.events.add("rollback", name, to)
        log.info(
            "model %s: rolled back from version %s to %d (reloaded: no standby copy)",
            name,
            current,
            to,
            extra={"event": "rollback", "model": name, "version": to},
        )
        return to, "reloaded"

    def set_traffic(self, name: str, values: dict) -> TrafficPolicy:
        entry = self.entry(name)
        policy = apply_update(entry.policy, values)
        for version in (policy.canary, policy.shadow, policy.stable):
            if version is not None and version not in entry.versions:
                raise InvalidInput(
                    f"model '{name}': version {version} is not loaded; loaded: {sorted(entry.versions)}"
                )
        if policy.stable is not None:  # a standby version named stable serves again
            entry.versions[policy.stable].serve()
        entry.policy = policy
        entry.rollback_to = None
        entry.guard.clear()
        entry.resolve_routes()
        log.info(
            "model %s: traffic policy %s",
            name,
            entry.policy,
            extra={"event": "traffic_policy", "model": name},
        )
        return entry.policy

    # ----- routing
    # -------------------------------------------------------------------------------------------

    def entry(self, name: str) -> ModelEntry:
        entry = self._models.get(name)
        if entry is None:
            # Triton's words, which clients match
            raise NotFound(f"Request for unknown model: '{repository.shown(name, 100)}' is not found")
        return entry

    def route(self, name: str, version: str = "", request: InferRequest | None = None) -> ModelVersion:
        """The version serving a request: pinned, or by the traffic policy (stable, or the canary's share).
        Without `request` (metadata, config, readiness) an unpinned name always resolves to stable."""
        entry = self.entry(name)
        if not version:
            serving = entry.stable
            if serving is None:
                reason = entry.reason()
                raise Unavailable(f"model '{name}' has no ready version" + (f": {reason}" if reason else ""))
            canary = entry.canary
            if (
                canary is not None
                and request is not None
                and goes_to_canary(entry.policy, request.parameters, self._rng)
            ):
                return canary
            return serving
        number = repository.parse_version(version)
        if number is None:
            raise InvalidInput(
                f"model_version '{repository.shown(version)}' is not a version: expected a decimal integer, "
                "e.g. 1"
            )
        loaded = entry.versions.get(number)
        if loaded is None:
            failure = entry.failures.get(number)
            if failure:
                raise Unavailable(f"model '{name}' version {version} failed to load: {failure}")
            raise NotFound(f"model '{name}' has no version {version}; loaded: {sorted(entry.versions)}")
        if not loaded.serving:
            raise Unavailable(f"model '{name}' version {version} is {loaded.state.value}")
        return loaded

    def after_response(
        self,
        version: ModelVersion,
        request: InferRequest,
        response: InferResponse | None,
        latency_s: float,
        ok: bool,
    ) -> None:
        """Feed the canary guard and the drift monitor, and mirror to the shadow version. Never delays the
        response: drift and shadow work is scheduled to run after it."""
        if ok and response is not None and version.drift is not None:
            asyncio.get_running_loop().call_soon(
                version.drift.observe,
                {t.name: t.array for t in request.inputs},
                dict(zip(response.output_names, response.outputs)),
            )
        entry = self._models.get(version.name)
        if entry is None:
            return
        if version is entry.canary and entry.policy.guard.enabled:
            now = self._clock()
            entry.guard.add(now, latency_s, ok)
            breach = None
            # the check sorts the window: not per request
            if now - entry.guard_checked >= GUARD_CHECK_INTERVAL_S:
                entry.guard_checked = now
                breach = entry.guard.breach(entry.policy.guard, now)
            if breach:
                self.events.add("guard_rollback", entry.name, version.version)
                log.warning(
                    "model %s: canary version %d breached its guard (%s); all traffic back to stable "
                    "version %d",
                    entry.name,
                    version.version,
                    breach,
                    entry.stable.version if entry.stable else -1,
                    extra={"event": "guard_rollback", "model": entry.name, "version": version.version},
                )
                entry.canary = None
                entry.policy = apply_update(entry.policy, {"canary": None, "canary_weight": 0.0})
                entry.guard.clear()
        shadow = entry.shadow
        if (
            ok
            and response is not None
            and shadow is not None
            and shadow is not version
            and self._rng.random() < entry.policy.shadow_fraction
        ):
            self._background.spawn(self._shadow(shadow, request, response), name=f"shadow {shadow.name}")

    async def _shadow(self, shadow: ModelVersion, request: InferRequest, served: InferResponse) -> None:
        await asyncio.sleep(0)  # let the served response go out first
        try:
            mirrored = await shadow.infer(request)
        except Exception as exc:  # a failing shadow must never touch the served traffic
            log.debug("shadow version %d of %s failed: %s", shadow.version, shadow.name, exc)
            return
        served_by_name = dict(zip(served.output_names, served.outputs))
        result = compare(
            [served_by_name[n] for n in mirrored.output_names if n in served_by_name], mirrored.outputs
        )
        results = self.shadow_results.setdefault(shadow.name, [])
        results.append(result)
        del results[:-1000]
        self.shadow_counts[shadow.name] = self.shadow_counts.get(shadow.name, 0) + 1

    async def compute_drift(self) -> None:
        """Refresh every monitored version's drift report, on a worker thread (off the request path)."""
        for version in self.versions():
            await version.refresh_drift()

    def event_counts(self) -> dict[tuple[str, str, str], int]:
        """Lifecycle event counts per (model, version, event), for the metrics."""
        return dict(self.events.by_version)

    def shadow_summary(self) -> list[tuple[str, int, int, float, float]]:
        rows = []
        for entry in self._models.values():
            results = self.shadow_results.get(entry.name)
            if results and entry.shadow is not None:
                agreement = [r.argmax_agreement for r in results if r.argmax_agreement == r.argmax_agreement]
                rows.append(
                    (
                        entry.name,
                        entry.shadow.version,
                        self.shadow_counts.get(entry.name, 0),
                        max(r.max_abs_diff for r in results),
                        sum(agreement) / len(agreement) if agreement else float("nan"),
                    )
                )
        return rows

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
        """Server readiness (Triton's strict readiness): every model that should be loaded has a ready
        version."""
        return all(entry.stable is not None for entry in self._models.values() if not entry.unloaded)

    # ----- shutdown
    # ------------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Drain every batcher (queued requests finish), then release the sessions."""
        versions = self.versions()
        self.guards.clear()
        for entry in self._models.values():
            entry.versions = {}
            entry.stable = entry.canary = entry.shadow = None
        await asyncio.gather(*(v.unload() for v in versions), self._background.wait(), return_exceptions=True)
        for entry in self._models.values():
            self._on_health_change(entry.name, False)
