"""Composition root: builds the pieces in order, and owns the one ordered shutdown.

Startup: metrics endpoint → registry loads the repository → gRPC server (inference, health, reflection) and
the HTTP/REST server listen, both on this event loop and both calling one data plane.
Shutdown (ARCHITECTURE.md §Shutdown): health NOT_SERVING → both frontends stop accepting and let in-flight
requests finish (within the grace) → drain batchers and unload sessions.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Callable

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from hotwire.proto import grpc_service_pb2, model_config_pb2
from hotwire.server import readiness
from hotwire.server.auth import AccessPolicy, exposure_warning
from hotwire.server.config import ServerConfig
from hotwire.server.dataplane import DataPlane
from hotwire.server.grpc_service import SERVICE_NAME, InferenceService
from hotwire.server.health import HealthServicer
from hotwire.server.http_server import HttpServer, bind
from hotwire.server.http_service import HttpService
from hotwire.server.limits import AdmissionControl, LoadLimits, RequestLimits
from hotwire.server.logs import RequestLogger
from hotwire.server.metrics import Metrics, MetricsServer, VersionView, start_metrics_server
from hotwire.server.model_control import ModelControl
from hotwire.server.registry import Registry
from hotwire.server.tasks import BackgroundTasks
from hotwire.server.tls import TlsFiles
from hotwire.server.workers import port_in_use

log = logging.getLogger(__name__)

# how often stats are mirrored into Prometheus (always just before a single-process scrape)
PUBLISH_INTERVAL_S = 1.0
DRIFT_EVERY = 5  # drift reports are recomputed every DRIFT_EVERY publishes
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class StartupError(Exception):
    """The server cannot start as configured (e.g. --exit-on-error and a model failed to load)."""


def _reflection_pool() -> descriptor_pool.DescriptorPool:
    """Our stubs live in a private pool; reflection needs one that also knows health and reflection."""
    pool = descriptor_pool.DescriptorPool()
    for file in (
        model_config_pb2.DESCRIPTOR,
        grpc_service_pb2.DESCRIPTOR,
        health_pb2.DESCRIPTOR,
        reflection_pb2.DESCRIPTOR,
    ):
        pool.Add(descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb))
    return pool


class App:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        # both read their files now: a wrong one stops the start with a ConfigError naming the flag
        self.tls = TlsFiles.from_flags(config.tls_cert, config.tls_key, config.tls_client_ca)
        self.access = AccessPolicy.from_file(config.api_keys)
        self.health = HealthServicer()
        self.registry = Registry(
            config.default_max_batch_size,
            on_health_change=self._set_model_health,
            load_limits=LoadLimits(
                config.max_model_batch_size, config.max_model_instances, config.max_buffer_bytes
            ),
        )
        self.control = ModelControl(
            self.registry,
            config.model_repository,
            config.model_control_mode,
            config.repository_poll_secs,
            config.load_model,
            max_upload_bytes=config.max_message_bytes,
        )
        self.metrics = Metrics()
        self.metrics.watch(
            versions=lambda: [
                VersionView(v.name, v.version_str, v.stats, v.batcher.queued, v.load_seconds)
                for v in (*self.registry.draining, *self.registry.versions())
            ],
            events=self.registry.event_counts,
            shadow=self.registry.shadow_summary,
            drift=lambda: [
                (v.name, v.version_str, f.feature, f.ks, f.ks_pvalue, f.psi)
                for v in self.registry.versions()
                if v.drift_report is not None
                for f in v.drift_report.features
            ],
        )
        self.metrics.watch_guards(self.registry.guard_views)  # fallbacks and circuit breakers
        self._publisher: asyncio.Task[None] | None = None
        self.server: grpc.aio.Server | None = None
        self._service: InferenceService | None = None
        self.grpc_port = 0
        self.http_port = 0
        self._http: HttpServer | None = None
        self.metrics_port = 0
        self._draining = False
        self._metrics_server: MetricsServer | None = None
        self._stopped = asyncio.Event()
        self._health_updates = BackgroundTasks("health updates")
        self.plane = DataPlane(
            self.registry,
            self.control,
            self.is_ready,
            RequestLogger(config.request_log_rate, config.slow_request_ms),
            exact_statistics=not config.reuse_port,
            max_response_bytes=config.max_message_bytes,
            admission=AdmissionControl(
                RequestLimits(
                    config.max_inflight,
                    config.max_request_tensors,
                    config.max_request_rows,
                    config.rate_limit,
                    config.rate_burst,
                    config.caller_rate_limit,
                    config.caller_burst,
                )
            ),
        )

        self.metrics.watch_refusals(lambda: self.plane.admission.refused)

    def _set_model_health(self, model: str, serving: bool) -> None:
        # Health callbacks come from the registry on the event loop; HealthServicer.set is a coroutine.
        status = SERVING if serving and not self._draining else NOT_SERVING
        self._health_updates.spawn(self.health.set(model, status), name=f"health {model}")

    def is_ready(self) -> bool:
        """ServerReady: up and not draining, and (strict readiness, the default) every model ready."""
        up = not self._draining and self.server is not None
        return up and (not self.config.strict_readiness or self.registry.all_ready())

    async def start(self) -> None:
        if self.config.metrics_port >= 0:
            self._metrics_server = start_metrics_server(
                self.config.host,
                self.config.metrics_port,
                self.metrics.exposition(),
                self.tls.server_context() if self.tls else None,
            )
            self.metrics_port = self._metrics_server.server_port
        root = self.config.model_repository
        log.info("model repository %s (model control mode %s)", root, self.config.model_control_mode)
        log.debug("settings: %s", self.config)
        await self.control.start()
        if root.is_dir() and not any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
            log.warning("model repository %s is empty: no models to serve", root)
        failed = [entry for entry in self.registry.models() if entry.failures]
        if self.config.exit_on_error and failed:
            await self.registry.close()
            self._close_metrics()
            raise StartupError(
                "--exit-on-error: "
                + "; ".join(f"model {e.name} failed to load: {e.reason()}" for e in failed)
            )
        self._publisher = asyncio.create_task(self._publish_metrics(), name="metrics-publisher")
        loop = asyncio.get_running_loop()

        def publish_on_loop() -> None:  # runs on the metrics HTTP thread
            async def publish() -> None:
                self.metrics.publish()

            if not loop.is_closed():
                asyncio.run_coroutine_threadsafe(publish(), loop).result(timeout=5)

        self.metrics.before_scrape = publish_on_loop
        options = [
            ("grpc.max_send_message_length", self.config.max_message_bytes),
            ("grpc.max_receive_message_length", self.config.max_message_bytes),
            # Workers of `--workers N` share the port; a single-process server must own it: two servers
            # silently sharing one is a bug.
            ("grpc.so_reuseport", 1 if self.config.reuse_port else 0),
        ]
        server = grpc.aio.server(options=options)
        self._service = InferenceService(self.plane, self.access)
        self._service.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server, pool=_reflection_pool()
        )
        address = f"{self.config.host}:{self.config.grpc_port}"
        try:
            if self.tls is not None:
                self.grpc_port = server.add_secure_port(address, self.tls.grpc_credentials())
            else:
                self.grpc_port = server.add_insecure_port(address)
        except RuntimeError:  # grpcio raises when the bind fails, with a message that only points at its logs
            self.grpc_port = 0
        if self.grpc_port == 0:
            problem = port_in_use(self.config.host, self.config.grpc_port) if self.config.grpc_port else None
            raise OSError(
                f"gRPC: {problem or f'could not listen on {address}'} "
                "(is another server using the port, or the host wrong?)"
            )
        await server.start()
        self.server = server
        if self.config.http_port >= 0:
            try:
                await self._start_http()
            except BaseException:
                await server.stop(0)
                raise
        await self.health.set("", SERVING)
        if not self.config.reuse_port:  # a worker's supervisor warns, once
            warning = exposure_warning(self.config.host, self.tls is not None, self.access.uses_keys)
            if warning:
                log.warning("%s", warning)
        log.info(
            "hotwire listening on %s:%d (gRPC)%s%s",
            self.config.host,
            self.grpc_port,
            f", HTTP on :{self.http_port}" if self._http else "",
            f", metrics on :{self.metrics_port}/metrics" if self._metrics_server else "",
        )
        if self.config.ready_fd >= 0:
            readiness.announce(
                self.config.ready_fd,
                readiness.Listening(
                    os.getpid(),
                    self.grpc_port,
                    self.http_port if self._http else -1,
                    self.metrics_port if self._metrics_server else -1,
                ),
            )

    async def _start_http(self) -> None:
        try:
            sock = bind(self.config.host, self.config.http_port, self.config.reuse_port)
        except OSError as exc:
            problem = port_in_use(self.config.host, self.config.http_port) if self.config.http_port else None
            raise OSError(
                f"HTTP: {problem or f'could not listen on {self.config.host}:{self.config.http_port}: {exc}'}"
                " (is another server using the port, or the host wrong?)"
            ) from None
        self._http = HttpServer(
            HttpService(self.plane, self.access),
            sock,
            self.config.max_message_bytes,
            self.config.shutdown_grace_s,
            self.tls.server_context() if self.tls else None,
        )
        await self._http.start()
        self.http_port = self._http.port

    async def stop(self) -> None:
        """The one shutdown order. Safe to call twice."""
        if self._draining:
            await self._stopped.wait()
            return
        self._draining = True
        log.info(
            "shutting down: health NOT_SERVING, finishing in-flight requests (grace %.0f s)",
            self.config.shutdown_grace_s,
        )
        await self.health.enter_graceful_shutdown()
        await self.health.end_watches()  # idle streams must not hold the shutdown for the whole grace
        # Both frontends stop accepting and finish their in-flight requests, concurrently, within one grace.
        await asyncio.gather(
            self._stop_grpc(), self._http.stop() if self._http is not None else asyncio.sleep(0)
        )
        await self.control.stop()
        if self._publisher is not None:
            self._publisher.cancel()
            await asyncio.gather(self._publisher, return_exceptions=True)
        # The final numbers, drained requests included; before the registry closes, which forgets the versions
        # (and a publish without them would retire their series).
        self.metrics.publish()
        await self.registry.close()
        await self._health_updates.wait()  # the registry's last NOT_SERVING updates
        self._close_metrics()
        log.info("shutdown complete")
        self._stopped.set()

    async def _stop_grpc(self) -> None:
        """New inference calls are answered UNAVAILABLE while those in flight finish; only then does gRPC's
        own shutdown start, which cancels what races it (ARCHITECTURE.md §Shutdown)."""
        if self.server is None or self._service is None:
            return
        started = time.monotonic()
        self._service.drain()
        try:
            await asyncio.wait_for(self._service.drained(), self.config.shutdown_grace_s)
        except TimeoutError:
            pass  # gRPC's stop cancels what is still running
        await self.server.stop(max(0.0, self.config.shutdown_grace_s - (time.monotonic() - started)))

    def _close_metrics(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None

    async def _publish_metrics(self) -> None:
        published = 0
        while True:
            if published % DRIFT_EVERY == 0:
                try:
                    await self.registry.compute_drift()
                except Exception:  # drift is advisory: a failure must never stop metrics
                    log.exception("drift computation failed")
            self.metrics.publish()
            published += 1
            await asyncio.sleep(PUBLISH_INTERVAL_S)

    async def run(self, force_exit: Callable[[], None]) -> None:
        """Serve until SIGTERM/SIGINT, then shut down in order; a second signal calls `force_exit`."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()

        def on_signal(signum: int) -> None:
            if stop_requested.is_set():
                log.warning("second %s: forcing exit", signal.Signals(signum).name)
                force_exit()
            log.info("received %s", signal.Signals(signum).name)
            stop_requested.set()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        await self.start()
        await stop_requested.wait()
        await self.stop()
