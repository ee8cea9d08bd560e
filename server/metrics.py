"""Prometheus metrics with Triton's names and labels (`model`, `version`), so existing Triton dashboards work.

This module owns every Prometheus object. The exact numbers live in each version's VersionStats; `Metrics.publish`
mirrors them into Prometheus by setting absolute values, so the request path pays nothing for metrics. It runs on
the event loop about once a second, and again just before each scrape in a single-process server.

With `--workers N` every worker writes its values into prometheus-client's multiprocess files (gauges in `sum`
mode, which keeps a dead worker's last values so counters never go down) and the supervisor's /metrics adds them
up. Counter-like families are re-typed `counter` at exposition, named exactly as Triton names them (no `_total`).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Gauge, PlatformCollector, ProcessCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from hotwire.server.stats import VersionStats

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client reads it at import: set before importing


@dataclass(frozen=True)
class Family:
    name: str
    doc: str
    read: Callable[[VersionStats], float]


FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")

COUNTERS: tuple[Family, ...] = (
    Family("nv_inference_request_success", "Number of successful inference requests, all batch sizes",
           lambda s: s.success.count),
    Family("nv_inference_count", "Number of inferences performed (a batch of N rows counts N)",
           lambda s: s.inference_count),
    Family("nv_inference_exec_count", "Number of model executions performed (batches)", lambda s: s.execution_count),
    Family("nv_inference_request_duration_us", "Cumulative inference request duration in microseconds",
           lambda s: (s.success.ns + s.fail.ns) / 1e3),
    Family("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds",
           lambda s: s.queue.ns / 1e3),
    Family("nv_inference_compute_infer_duration_us", "Cumulative compute inference duration in microseconds",
           lambda s: s.compute_infer.ns / 1e3),
    Family("hotwire_request_handler_duration_us",
           "Cumulative time from request bytes in to response bytes out (ModelInfer, successes), microseconds",
           lambda s: s.handler.ns / 1e3),
    Family("hotwire_request_handler_count", "ModelInfer successes timed by hotwire_request_handler_duration_us",
           lambda s: s.handler.count),
)
FAILURES = "nv_inference_request_failure"
COUNTER_NAMES = frozenset({f.name for f in COUNTERS} | {FAILURES})


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROCESS_ENV) or None


class Metrics:
    """Every Prometheus object of this process, in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()  # publish runs on the loop and, before a scrape, on the HTTP thread
        self._sources: Callable[[], Iterable[tuple[str, str, VersionStats]]] = lambda: ()
        if multiprocess_dir() is None:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            self.registry.register(_PublishBeforeScrape(self.publish))
        self._gauges = {
            f.name: Gauge(f.name, f.doc, ["model", "version"], registry=self.registry, multiprocess_mode="sum")
            for f in COUNTERS
        }
        self._failures = Gauge(FAILURES, "Number of failed inference requests, all batch sizes",
                               ["model", "version", "reason"], registry=self.registry, multiprocess_mode="sum")

    def watch(self, sources: Callable[[], Iterable[tuple[str, str, VersionStats]]]) -> None:
        """What to publish: (model, version, stats) for every loaded version."""
        self._sources = sources

    def publish(self) -> None:
        with self._lock:
            for model, version, stats in list(self._sources()):
                for family in COUNTERS:
                    self._gauges[family.name].labels(model, version).set(family.read(stats))
                for reason in FAILURE_REASONS:
                    self._failures.labels(model, version, reason).set(stats.fail_by_reason.get(reason, 0))

    def exposition(self) -> CollectorRegistry:
        """The registry a single-process server's /metrics serves."""
        exposed = CollectorRegistry(auto_describe=False)
        exposed.register(_TritonTypes(_Collected(self.registry.collect)))
        return exposed

    @staticmethod
    def multiprocess_exposition() -> CollectorRegistry:
        """The registry the --workers supervisor serves: every worker's values, summed."""
        from prometheus_client import multiprocess

        path = multiprocess_dir()
        exposed = CollectorRegistry(auto_describe=False)
        exposed.register(_TritonTypes(_Collected(lambda: multiprocess.MultiProcessCollector(None, path=path).collect())))
        return exposed


class _PublishBeforeScrape(Collector):
    """Registered first, so a single-process scrape always sees the latest numbers."""

    def __init__(self, publish: Callable[[], None]) -> None:
        self._publish = publish

    def collect(self) -> Iterator[Metric]:
        self._publish()
        return iter(())


class _Collected(Collector):
    def __init__(self, collect: Callable[[], Iterable[Metric]]) -> None:
        self._collect = collect

    def collect(self) -> Iterable[Metric]:
        return self._collect()


class _TritonTypes(Collector):
    """Families that count are exposed as Triton exposes them: type counter, no `_total` suffix."""

    def __init__(self, source: Collector) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        for family in self._source.collect():
            if family.name in COUNTER_NAMES:
                family.type = "counter"
            yield family


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def render(registry: CollectorRegistry) -> bytes:
    """Prometheus text format 0.0.4, family names as given (prometheus-client would add `_total` to counters)."""
    lines: list[str] = []
    for family in registry.collect():
        lines.append(f"# HELP {family.name} {family.documentation.replace(chr(10), ' ')}")
        lines.append(f"# TYPE {family.name} {family.type}")
        for sample in family.samples:
            labels = ",".join(f'{key}="{_escape(str(value))}"' for key, value in sample.labels.items())
            lines.append(f"{sample.name}{{{labels}}} {_number(sample.value)}" if labels
                         else f"{sample.name} {_number(sample.value)}")
    return ("\n".join(lines) + "\n").encode()


class MetricsServer(ThreadingHTTPServer):
    daemon_threads = True


def start_metrics_server(host: str, port: int, registry: CollectorRegistry) -> MetricsServer:
    """Serve GET /metrics on a daemon thread; port 0 picks a free one (read it from `.server_port`)."""

    class Handler(BaseHTTPRequestHandler):
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

    server = MetricsServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
