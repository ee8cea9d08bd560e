"""Prometheus metrics with Triton's names and labels (`model`, `version`), so existing Triton dashboards work.

This module owns every Prometheus object. The exact numbers live in each version's VersionStats;
`Metrics.publish` mirrors them into Prometheus by setting absolute values, so the request path pays nothing
for metrics. It runs on the event loop about once a second, and again just before each scrape in a
single-process server.

Lifecycle events (`hotwire_lifecycle_events_total`) carry `model` and `version` too, so an alert can name the
model a canary guard rolled back. Each loaded version has all four events at 0 (a series born at 1 shows no
increase to Prometheus), and a count above 0 stays after its version is gone, like any counter's history.

A version's series exist while it is loaded: when a (model, version) is no longer among the watched versions
(it was swapped out, unloaded or rolled back from), the next publish removes every series labelled with it, as
Triton does for an unloaded model, so no gauge keeps reading its last value (a pending count, a drift p-value)
forever.

With `--workers N` every worker writes its values into prometheus-client's multiprocess files (gauges in `sum`
mode, which keeps a dead worker's last values so counters never go down) and the supervisor's /metrics adds
them up. Those files cannot forget a series, so each worker also marks the versions it has loaded
(LOADED_MARKER, per pid, dropped when the worker dies) and the supervisor serves only the series of versions
some live worker marks. At exposition, counter-like families are typed `counter` under Triton's exact names
(no `_total` added), and the `_bucket` / `_sum` / `_count` series of hotwire's histograms are put back
together as histogram families.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, PlatformCollector, ProcessCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from hotwire.server.errors import FailureReason
from hotwire.server.stats import Histogram, VersionStats

log = logging.getLogger(__name__)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client reads it at import: set before importing


@dataclass(frozen=True)
class Family:
    name: str
    doc: str
    read: Callable[[VersionStats], float]


@dataclass(frozen=True)
class VersionView:
    """What publish needs of one loaded version."""

    model: str
    version: str
    stats: VersionStats
    pending: int
    load_seconds: float


@dataclass(frozen=True)
class GuardView:
    """What publish needs of one model with a fallback or a circuit breaker (fallback.ModelGuard.view)."""

    model: str
    fallback_kind: str | None  # "model" | "constant" | None (a breaker only)
    breaker_state: str | None  # one of BREAKER_STATES; None: no breaker
    fallbacks: dict[str, int]  # kind -> answers the fallback gave
    transitions: dict[str, int]  # state entered -> times
    rejected: int  # requests an open breaker failed fast


BREAKER_STATES = ("closed", "open", "half_open")
# (model, version, feature, ks or None, ks p-value or None, psi)
DriftRow = tuple[str, str, str, "float | None", "float | None", float]
FAILURE_REASONS = tuple(FailureReason)
COUNTERS: tuple[Family, ...] = (
    Family(
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        lambda s: s.success.count,
    ),
    Family(
        "nv_inference_count",
        "Number of inferences performed (a batch of N rows counts N)",
        lambda s: s.inference_count,
    ),
    Family(
        "nv_inference_exec_count",
        "Number of model executions performed (batches)",
        lambda s: s.execution_count,
    ),
    Family(
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds",
        lambda s: s.success.ns / 1e3,  # successes only, as Triton's UpdateSuccess; failures add nothing
    ),
    Family(
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds",
        lambda s: s.queue.ns / 1e3,
    ),
    Family(
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds",
        lambda s: s.compute_input.ns / 1e3,
    ),
    Family(
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds",
        lambda s: s.compute_infer.ns / 1e3,
    ),
    Family(
        "nv_inference_compute_output_duration_us",
        "Cumulative compute output duration in microseconds",
        lambda s: s.compute_output.ns / 1e3,
    ),
    Family(
        "hotwire_request_handler_duration_us",
        "Cumulative time from request bytes in to response bytes out (ModelInfer, successes), microseconds",
        lambda s: s.handler.ns / 1e3,
    ),
    Family(
        "hotwire_request_handler_count",
        "ModelInfer successes timed by hotwire_request_handler_duration_us",
        lambda s: s.handler.count,
    ),
)
FAILURES = "nv_inference_request_failure"
HISTOGRAMS: tuple[tuple[str, str, Callable[[VersionStats], Histogram]], ...] = (
    (
        "hotwire_request_duration_us",
        "Inference request latency (received to response ready), microseconds",
        lambda s: s.latency_us,
    ),
    (
        "hotwire_queue_duration_us",
        "Time requests waited in the batcher's queue, microseconds",
        lambda s: s.queue_us,
    ),
    ("hotwire_batch_size", "Rows per executed batch", lambda s: s.batch_rows),
)
LIFECYCLE = "hotwire_lifecycle_events_total"
FALLBACKS = "hotwire_fallback_responses_total"
BREAKER_STATE = "hotwire_breaker_state"
BREAKER_TRANSITIONS = "hotwire_breaker_transitions_total"
BREAKER_REJECTED = "hotwire_breaker_rejected_total"
REFUSED = "hotwire_requests_refused_total"
LIFECYCLE_EVENTS = ("swap", "rollback", "guard_rollback", "load_failure")
COUNTER_NAMES = frozenset(
    {f.name for f in COUNTERS}
    # process_cpu_seconds_total: the --workers one
    | {FAILURES, LIFECYCLE, "hotwire_shadow_comparisons_total", "process_cpu_seconds_total"}
    | {FALLBACKS, BREAKER_TRANSITIONS, BREAKER_REJECTED, REFUSED}
)
# Multiprocess only, never exposed: 1 for each (model, version) a worker has loaded, per worker pid.
LOADED_MARKER = "hotwire_version_loaded"
HISTOGRAM_NAMES = frozenset(name for name, _, _ in HISTOGRAMS)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROCESS_ENV) or None


class Metrics:
    """Every Prometheus object of this process, in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()  # publish runs on the loop and, before a scrape, on the HTTP thread
        self._versions: Callable[[], Iterable[VersionView]] = lambda: ()
        self._events: Callable[[], dict[tuple[str, str, str], int]] = dict
        self._shadow: Callable[[], Iterable[tuple[str, int, int, float, float]]] = lambda: ()
        self._drift: Callable[[], Iterable[DriftRow]] = lambda: ()
        self._guards: Callable[[], Iterable[GuardView]] = lambda: ()
        self._refused: Callable[[], dict[str, int]] = dict
        self._multiprocess = multiprocess_dir() is not None
        self._published: dict[Gauge, set[tuple[str, ...]]] = {}  # labelled series set by the last publish
        # Called on the HTTP thread before a single-process scrape. The App points it at the event loop, since
        # publish reads loop-owned state.
        self.before_scrape: Callable[[], None] = self.publish
        if not self._multiprocess:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            self.registry.register(_PublishBeforeScrape(lambda: self.before_scrape()))
        else:  # each worker's own process numbers, labelled by pid in the supervisor's sum
            self._rss = Gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes, per worker",
                registry=self.registry,
                multiprocess_mode="liveall",
            )
            self._cpu = Gauge(
                "process_cpu_seconds_total",
                "User and system CPU time in seconds, per worker",
                registry=self.registry,
                multiprocess_mode="liveall",
            )
        self.registry.register(_GpuCollector())
        labels = ["model", "version"]
        gauge = lambda name, doc, extra=(), mode="sum": Gauge(  # noqa: E731
            name, doc, labels + list(extra), registry=self.registry, multiprocess_mode=mode
        )
        self._counters = {f.name: gauge(f.name, f.doc) for f in COUNTERS}
        self._failures = gauge(FAILURES, "Number of failed inference requests, all batch sizes", ["reason"])
        self._pending = gauge(
            "nv_inference_pending_request_count",
            "Instantaneous number of requests waiting in the queue",
            mode="livesum",
        )
        self._load = gauge(
            "nv_model_load_duration_secs",
            "Time the model's version took to load and warm, seconds",
            mode="max",
        )
        self._histograms = {
            name: (
                gauge(f"{name}_bucket", doc, ["le"]),
                gauge(f"{name}_sum", doc),
                gauge(f"{name}_count", doc),
                read,
            )
            for name, doc, read in HISTOGRAMS
        }
        self._lifecycle = gauge(
            LIFECYCLE,
            "Model lifecycle events: swaps (to version), rollbacks (to version), "
            "canary guard rollbacks (of version), failed loads",
            ["event"],
        )
        self._shadow_count = gauge(
            "hotwire_shadow_comparisons_total", "Requests mirrored to the shadow and compared"
        )
        self._shadow_diff = gauge(
            "hotwire_shadow_max_abs_diff",
            "Largest |served - shadow| output difference in the recent comparisons",
            mode="max",
        )
        self._shadow_agreement = gauge(
            "hotwire_shadow_argmax_agreement",
            "Fraction of recent shadow comparisons "
            "whose argmax agreed with the served response (per worker under --workers)",
            mode="liveall",
        )
        self._drift_ks = gauge(
            "hotwire_drift_ks",
            "Kolmogorov-Smirnov statistic, current window vs reference",
            ["feature"],
            mode="liveall",
        )
        self._drift_p = gauge(
            "hotwire_drift_ks_pvalue",
            "KS test p-value, current window vs reference",
            ["feature"],
            mode="liveall",
        )
        self._drift_psi = gauge(
            "hotwire_drift_psi",
            "Population stability index, current window vs reference",
            ["feature"],
            mode="liveall",
        )
        # Per model, not per version: a fallback and a breaker are the model's. Counters sum over --workers
        # (each worker has its own breaker); the state gauge counts the live workers in each state.
        per_model = lambda name, doc, extra, mode="sum": Gauge(  # noqa: E731
            name, doc, ["model", *extra], registry=self.registry, multiprocess_mode=mode
        )
        self._fallbacks = per_model(FALLBACKS, "Responses a model's fallback gave, by kind", ["kind"])
        self._breaker_state = per_model(
            BREAKER_STATE, "1 for the circuit breaker's current state, 0 for the others", ["state"], "livesum"
        )
        self._breaker_transitions = per_model(
            BREAKER_TRANSITIONS, "Circuit breaker transitions, by the state entered", ["state"]
        )
        self._breaker_rejected = per_model(
            BREAKER_REJECTED, "Requests an open circuit breaker failed fast (no fallback answered)", []
        )
        # labelled by model only: never taken for a (model, version) a worker has loaded
        self._per_model = {
            self._fallbacks,
            self._breaker_state,
            self._breaker_transitions,
            self._breaker_rejected,
        }
        # server-wide, no model: requests the limits refused before they reached one (limits.py)
        self._refusals = Gauge(
            REFUSED,
            "Inference requests refused before they queued, by reason (limits and load shedding)",
            ["reason"],
            registry=self.registry,
            multiprocess_mode="sum",
        )
        self._per_model.add(self._refusals)  # never taken for a loaded (model, version) either
        self._loaded: Gauge | None = None
        if self._multiprocess:
            self._loaded = gauge(LOADED_MARKER, "1 while this worker has the version loaded", mode="liveall")

    def watch(
        self,
        versions: Callable[[], Iterable[VersionView]],
        events: Callable[[], dict[tuple[str, str, str], int]] = dict,
        shadow: Callable[[], Iterable[tuple[str, int, int, float, float]]] = lambda: (),
        drift: Callable[[], Iterable[DriftRow]] = lambda: (),
    ) -> None:
        """What to publish: every loaded version; lifecycle event counts by (model, version, event); shadow
        comparisons as (model, version, count, max abs diff, argmax agreement); drift as (model, version,
        feature, ks, p-value, psi)."""
        self._versions, self._events, self._shadow, self._drift = versions, events, shadow, drift

    def watch_guards(self, guards: Callable[[], Iterable[GuardView]]) -> None:
        """What to publish of fallbacks and circuit breakers: one view per model that has either
        (Registry.guard_views)."""
        self._guards = guards

    def watch_refusals(self, refused: Callable[[], dict[str, int]]) -> None:
        """What to publish of the limits: refusals by reason (AdmissionControl.refused)."""
        self._refused = refused

    def publish(self) -> None:
        with self._lock:
            published: dict[Gauge, set[tuple[str, ...]]] = {}

            def put(gauge: Gauge, labels: tuple[str, ...], value: float) -> None:
                gauge.labels(*labels).set(value)
                published.setdefault(gauge, set()).add(labels)

            events = self._events()
            for view in list(self._versions()):
                labels = (view.model, view.version)
                # A loaded version's events start at 0, so Prometheus sees the first one as an increase.
                for event in LIFECYCLE_EVENTS:
                    put(self._lifecycle, (*labels, event), events.get((*labels, event), 0))
                stats = view.stats
                for family in COUNTERS:
                    put(self._counters[family.name], labels, family.read(stats))
                for reason in FAILURE_REASONS:
                    put(self._failures, (*labels, reason.value), stats.fail_by_reason.get(reason, 0))
                put(self._pending, labels, view.pending)
                put(self._load, labels, view.load_seconds)
                for bucket, total, count, read in self._histograms.values():
                    histogram = read(stats)
                    cumulative = 0
                    for bound, in_bucket in zip((*histogram.bounds, math.inf), histogram.counts):
                        cumulative += in_bucket
                        put(bucket, (*labels, _le(bound)), cumulative)
                    put(total, labels, histogram.total)
                    put(count, labels, cumulative)
            for key, value in events.items():  # counts outlive their version (a failed load never loaded)
                put(self._lifecycle, key, value)
            for model, number, compared, diff, agreement in self._shadow():
                shadow = (model, str(number))
                put(self._shadow_count, shadow, compared)
                put(self._shadow_diff, shadow, diff)
                put(self._shadow_agreement, shadow, agreement)
            for model, version, feature, ks, pvalue, psi in self._drift():
                if ks is not None and pvalue is not None:
                    put(self._drift_ks, (model, version, feature), ks)
                    put(self._drift_p, (model, version, feature), pvalue)
                put(self._drift_psi, (model, version, feature), psi)
            for guard in self._guards():
                # the configured kind starts at 0, so Prometheus sees its first answer as an increase
                kinds = {*guard.fallbacks, *([guard.fallback_kind] if guard.fallback_kind else [])}
                for kind in sorted(kinds):
                    put(self._fallbacks, (guard.model, kind), guard.fallbacks.get(kind, 0))
                if guard.breaker_state is not None:
                    for state in BREAKER_STATES:
                        put(self._breaker_state, (guard.model, state), float(state == guard.breaker_state))
                        put(self._breaker_transitions, (guard.model, state), guard.transitions.get(state, 0))
                    put(self._breaker_rejected, (guard.model,), guard.rejected)
            for refusal, refusals in self._refused().items():
                put(self._refusals, (refusal,), refusals)
            if self._multiprocess:
                assert self._loaded is not None
                # Lifecycle counts outlive their version: they must not mark it loaded.
                loaded = {
                    key[:2]
                    for gauge, series in published.items()
                    if gauge is not self._lifecycle and gauge not in self._per_model
                    for key in series
                }
                for marked in loaded:
                    put(self._loaded, marked, 1)
            self._retire(published)
            if self._multiprocess:
                usage = resource.getrusage(resource.RUSAGE_SELF)
                self._cpu.set(usage.ru_utime + usage.ru_stime)
                self._rss.set(_resident_bytes())

    def _retire(self, published: dict[Gauge, set[tuple[str, ...]]]) -> None:
        """Remove the series published last time and not this time: their version (or feature, or shadow) is
        gone.

        A multiprocess worker cannot delete from its files (prometheus-client only warns): it zeroes its
        loaded marker, which the supervisor filters on, and its `livesum` gauges
        (a pending count must not linger in the supervisor's sum), and sets its per-pid `liveall` gauges to
        NaN (no value: a drift p-value of 0 would alert). `sum` and `max` gauges keep their values there, so a
        version still loaded in another worker keeps counters that never go down."""
        for gauge, before in self._published.items():
            for labels in before - published.get(gauge, set()):
                if not self._multiprocess:
                    gauge.remove(*labels)
                elif gauge is self._loaded or gauge._multiprocess_mode == "livesum":
                    gauge.labels(*labels).set(0)
                elif gauge._multiprocess_mode == "liveall":
                    gauge.labels(*labels).set(math.nan)
        self._published = published

    def exposition(self) -> CollectorRegistry:
        """The registry a single-process server's /metrics serves."""
        exposed = CollectorRegistry(auto_describe=False)
        exposed.register(_Exposed(self.registry.collect))
        return exposed

    @staticmethod
    def multiprocess_exposition(
        workers: Callable[[], Iterable[tuple[int, str, int]]] = tuple,
    ) -> CollectorRegistry:
        """The registry the --workers supervisor serves: every worker's values, summed; `workers`: (index,
        CUDA device or "", pid) of each live worker, and the GPUs (MIG instances included) through NVML."""
        from prometheus_client import multiprocess

        path = multiprocess_dir()
        exposed = CollectorRegistry(auto_describe=False)
        exposed.register(
            _Exposed(lambda: multiprocess.MultiProcessCollector(None, path=path).collect(), loaded_only=True)
        )
        exposed.register(_WorkerInfo(workers))
        exposed.register(_GpuCollector())
        return exposed


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _resident_bytes() -> float:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0.0


class _PublishBeforeScrape(Collector):
    """Registered first, so a single-process scrape always sees the latest numbers."""

    def __init__(self, publish: Callable[[], None]) -> None:
        self._publish = publish

    def collect(self) -> Iterator[Metric]:
        self._publish()
        return iter(())


class _WorkerInfo(Collector):
    def __init__(self, workers: Callable[[], Iterable[tuple[int, str, int]]]) -> None:
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        info = Metric("hotwire_worker_info", "1 per live worker: its index, CUDA device and pid", "gauge")
        for index, device, pid in self._workers():
            info.add_sample(
                "hotwire_worker_info", {"worker": str(index), "device": device, "pid": str(pid)}, 1.0
            )
        yield info


class _GpuCollector(Collector):
    """GPU utilization and memory through NVML (nvidia-ml-py), read at scrape time; nothing without a GPU.

    A GPU in MIG mode also gets each MIG instance's memory (hotwire_mig_memory_*_bytes, by gpu_uuid and
    mig_uuid), which Triton does not export. NVML has no utilization for a MIG instance, nor for a GPU in MIG
    mode: that takes DCGM's profiling fields (DCGM_FI_PROF_GR_ENGINE_ACTIVE, e.g. from dcgm-exporter), whose
    Python bindings come with a DCGM install rather than from PyPI, so hotwire does not read them and such a
    GPU simply has no nv_gpu_utilization sample.
    """

    def __init__(self) -> None:
        self._nvml = None
        try:
            import pynvml  # type: ignore[import-not-found]

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception:  # no nvidia-ml-py, no driver or no GPU: no GPU metrics
            self._nvml = None

    def collect(self) -> Iterator[Metric]:
        if self._nvml is None:
            return
        nvml = self._nvml
        utilization = Metric("nv_gpu_utilization", "GPU utilization rate [0.0 - 1.0)", "gauge")
        used = Metric("nv_gpu_memory_used_bytes", "GPU used memory, in bytes", "gauge")
        total = Metric("nv_gpu_memory_total_bytes", "GPU total memory, in bytes", "gauge")
        mig_used = Metric("hotwire_mig_memory_used_bytes", "MIG instance used memory, in bytes", "gauge")
        mig_total = Metric("hotwire_mig_memory_total_bytes", "MIG instance total memory, in bytes", "gauge")
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            gpu = {"gpu_uuid": str(nvml.nvmlDeviceGetUUID(handle))}
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            used.add_sample("nv_gpu_memory_used_bytes", gpu, float(memory.used))
            total.add_sample("nv_gpu_memory_total_bytes", gpu, float(memory.total))
            try:
                rate = nvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
                utilization.add_sample("nv_gpu_utilization", gpu, rate)
            except nvml.NVMLError:  # not supported in MIG mode (see above)
                pass
            for mig in self._mig_instances(handle):
                labels = {**gpu, "mig_uuid": str(nvml.nvmlDeviceGetUUID(mig))}
                memory = nvml.nvmlDeviceGetMemoryInfo(mig)
                mig_used.add_sample("hotwire_mig_memory_used_bytes", labels, float(memory.used))
                mig_total.add_sample("hotwire_mig_memory_total_bytes", labels, float(memory.total))
        yield from (utilization, used, total, mig_used, mig_total)

    def _mig_instances(self, handle: object) -> list[object]:
        """The MIG instances of a GPU in MIG mode ([] for any other GPU)."""
        nvml = self._nvml
        assert nvml is not None
        try:
            current, _pending = nvml.nvmlDeviceGetMigMode(handle)
        except nvml.NVMLError:  # a GPU without MIG support
            return []
        if current != nvml.NVML_DEVICE_MIG_ENABLE:
            return []
        instances = []
        for slot in range(nvml.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                instances.append(nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot))
            except nvml.NVMLError:  # an empty slot
                continue
        return instances


class _Exposed(Collector):
    """Families as Triton and Prometheus expect them: counters typed `counter` under their exact names, and
    each hotwire histogram's `_bucket`/`_sum`/`_count` gauges put together as one histogram family. With
    `loaded_only` (the --workers supervisor), only series of versions that a live worker marks as loaded are
    kept."""

    def __init__(self, collect: Callable[[], Iterable[Metric]], loaded_only: bool = False) -> None:
        self._collect = collect
        self._loaded_only = loaded_only

    def collect(self) -> Iterator[Metric]:
        families: Iterable[Metric] = self._collect()
        if self._loaded_only:
            families = _loaded_series_only(list(families))
        parts: dict[str, list[Sample]] = {}
        docs: dict[str, str] = {}
        for family in families:
            base = next(
                (h for h in HISTOGRAM_NAMES if family.name in (f"{h}_bucket", f"{h}_sum", f"{h}_count")), None
            )
            if base is not None:
                parts.setdefault(base, []).extend(family.samples)
                docs[base] = family.documentation
                continue
            if family.name in COUNTER_NAMES:
                family.type = "counter"
            yield family
        for base, samples in parts.items():
            histogram = Metric(base, docs[base], "histogram")
            histogram.samples = sorted(
                samples,
                key=lambda s: (tuple(sorted((k, v) for k, v in s.labels.items() if k != "le")), _order(s)),
            )
            yield histogram


def _loaded_series_only(families: list[Metric]) -> Iterator[Metric]:
    """Drop the marker family, and every (model, version) series no live worker has loaded: per pid for the
    `liveall` families (which carry a pid label), over all live workers for the summed ones. A lifecycle count
    above 0 stays, as in a single process: it outlives its version (a failed load never was loaded)."""
    loaded: set[tuple[str, str]] = set()
    loaded_by_pid: set[tuple[str, str, str]] = set()
    for family in families:
        if family.name == LOADED_MARKER:
            for sample in family.samples:
                if sample.value > 0:
                    loaded.add((sample.labels["model"], sample.labels["version"]))
                    loaded_by_pid.add(
                        (sample.labels["model"], sample.labels["version"], sample.labels.get("pid", ""))
                    )
    for family in families:
        if family.name == LOADED_MARKER:
            continue
        kept = []
        for sample in family.samples:
            labels = sample.labels
            if "model" not in labels or "version" not in labels:
                kept.append(sample)
            elif "pid" in labels:
                if (labels["model"], labels["version"], labels["pid"]) in loaded_by_pid:
                    kept.append(sample)
            elif (labels["model"], labels["version"]) in loaded or (
                family.name == LIFECYCLE and sample.value > 0
            ):
                kept.append(sample)
        family.samples = kept
        yield family


def _order(sample: Sample) -> tuple[int, float]:
    if sample.name.endswith("_bucket"):
        le = sample.labels.get("le", "+Inf")
        return 0, math.inf if le == "+Inf" else float(le)
    return (1, 0.0) if sample.name.endswith("_sum") else (2, 0.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(registry: CollectorRegistry) -> bytes:
    """Prometheus text format 0.0.4, family names as given (prometheus-client would add `_total` to counters).

    A counter family whose samples are `<name>_total` (prometheus-client's own collectors, e.g.
    ProcessCollector's process_cpu_seconds) gets `# HELP/TYPE <name>_total`, as prometheus-client's
    generate_latest writes it: in this format the TYPE line must name the samples, or parsers see an empty
    counter and an untyped metric."""
    lines: list[str] = []
    for family in registry.collect():
        name = family.name
        if (
            family.type == "counter"
            and family.samples
            and all(s.name == f"{name}_total" for s in family.samples)
        ):
            name = f"{name}_total"
        lines.append(f"# HELP {name} {family.documentation.replace(chr(10), ' ')}")
        lines.append(f"# TYPE {name} {family.type}")
        for sample in family.samples:
            labels = ",".join(f'{key}="{_escape(str(value))}"' for key, value in sample.labels.items())
            lines.append(
                f"{sample.name}{{{labels}}} {_number(sample.value)}"
                if labels
                else f"{sample.name} {_number(sample.value)}"
            )
    return ("\n".join(lines) + "\n").encode()


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a failed TLS handshake or a client gone mid-request: the client's problem, not a traceback on stderr
        log.debug("metrics request from %s failed", client_address, exc_info=True)


def start_metrics_server(
    host: str, port: int, registry: CollectorRegistry, tls: ssl.SSLContext | None = None
) -> MetricsServer:
    """Serve GET /metrics on a daemon thread; port 0 picks a free one (read it from `.server_port`).
    With `tls`, only over TLS."""

    class Handler(BaseHTTPRequestHandler):
        timeout = 30  # a client that stalls (mid-handshake or mid-request) gives its thread back

        def setup(self) -> None:
            super().setup()
            if tls is not None:
                # the handshake runs here, on this request's thread, not in the accept loop a stalled
                # client would block
                self.request.do_handshake()

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.split("?")[0] not in ("/metrics", "/"):
                self.send_error(404)
                return
            body = render(registry)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes every few seconds would flood the log

    try:
        server = MetricsServer((host, port), Handler)
    except OSError as exc:
        raise OSError(
            exc.errno,
            f"cannot serve metrics on {host}:{port}: {exc.strerror or exc} "
            "(--metrics-port; -1 turns metrics off)",
        ) from None
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
