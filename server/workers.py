"""`hotwire serve --workers N`: N server processes sharing the gRPC and HTTP ports (SO_REUSEPORT), under a
supervisor.

Workers are started as fresh interpreters (`python -m hotwire.server serve --reuse-port ...`), not forked: a
forked child inherits the parent's threads' locks, and numpy, ONNX Runtime, numba and gRPC all start threads
on import. A fresh interpreter has none of those hazards, so the supervisor may restart a crashed worker at
any time, and it can itself serve the aggregated /metrics. The kernel balances connections (not calls) across
the workers.

The supervisor runs no event loop and imports no ONNX Runtime: it waits on its children, forwards their logs
with a `[worker i]` prefix, restarts any that exits unexpectedly, and on SIGTERM/SIGINT passes the signal on
and waits. Each worker tells it that it listens through its own --ready-fd pipe (readiness.py), never through
its log.

`--devices D1,D2,...` (MIG-<uuid>, GPU-<uuid> or indices): `--workers` workers per device, each started
with CUDA_VISIBLE_DEVICES set to its one device, so a CUDA process inside sees exactly that GPU or MIG slice,
as device 0 (a CUDA process can use only one MIG instance anyway). The supervisor's /metrics then carries
`hotwire_worker_info{worker, device, pid}` and, through NVML, each device's memory (per MIG instance too).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import IO

from hotwire.server import readiness
from hotwire.server.auth import AccessPolicy, exposure_warning
from hotwire.server.config import ServerConfig
from hotwire.server.tls import TlsFiles

log = logging.getLogger("hotwire.workers")

# a worker that dies within RESTART_WINDOW_S of starting is restarted after this pause
RESTART_BACKOFF_S = 1.0
RESTART_WINDOW_S = 10.0
MAX_FAILED_STARTS = 3  # a worker that dies this many times in a row before listening: the server can't start
# A worker's exit status for "refuses to start as configured" (--exit-on-error and a model failed to load): a
# restart would refuse the same way, so the supervisor stops at once instead of retrying.
STARTUP_REFUSED_EXIT = 3
POLL_S = 0.2


@dataclass
class Worker:
    index: int
    process: subprocess.Popen[str]
    started_at: float
    device: str | None = None  # what CUDA_VISIBLE_DEVICES holds for it (None: the supervisor's own value)
    listening: threading.Event = field(default_factory=threading.Event)


def worker_devices(config: ServerConfig) -> list[str | None]:
    """Per worker index, its CUDA device: `workers` workers for each of --devices, in order (device-major), or
    `workers` workers that all see whatever the supervisor sees."""
    if not config.devices:
        return [None] * config.workers
    return [device for device in config.devices for _ in range(config.workers)]


def worker_environment(base: dict[str, str], device: str | None, metrics_dir: str) -> dict[str, str]:
    """A worker's environment: the supervisor's, its metrics directory, and its one device. HOTWIRE_DEVICES
    and HOTWIRE_WORKERS are the supervisor's to act on: a worker must not start workers of its own."""
    env = {k: v for k, v in base.items() if k not in ("HOTWIRE_DEVICES", "HOTWIRE_WORKERS")}
    env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    return env


def free_port(host: str) -> int:
    """A port that is free now (for --grpc-port 0: every worker must bind the same one)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def port_in_use(host: str, port: int) -> str | None:
    """Why `port` can't be bound on `host` by a server that owns it (None: it can). Bound without
    SO_REUSEPORT, so another server's workers (which set it) still count as holding the port: two worker
    groups never share one."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # a closed connection's TIME_WAIT is no owner
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return f"cannot bind {host}:{port}: {exc.strerror or exc}"
    return None


# limits.py's settings, passed on as they are: each worker applies them to itself
LIMIT_SETTINGS = (
    "max_inflight",
    "max_request_tensors",
    "max_request_rows",
    "rate_limit",
    "rate_burst",
    "caller_rate_limit",
    "caller_burst",
    "max_model_batch_size",
    "max_model_instances",
    "max_buffer_bytes",
)


def worker_command(config: ServerConfig, grpc_port: int, http_port: int, ready_fd: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hotwire.server",
        "serve",
        "--reuse-port",
        "--workers",
        "1",
        "--model-repository",
        str(config.model_repository),
        "--host",
        config.host,
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(http_port),
        "--metrics-port",
        "-1",
        "--ready-fd",
        str(ready_fd),
        "--log-level",
        config.log_level,
        "--log-format",
        config.log_format,
        "--request-log-rate",
        str(config.request_log_rate),
        "--slow-request-ms",
        str(config.slow_request_ms),
        "--max-message-bytes",
        str(config.max_message_bytes),
        "--shutdown-grace-s",
        str(config.shutdown_grace_s),
        "--default-max-batch-size",
        str(config.default_max_batch_size),
        "--model-control-mode",
        config.model_control_mode,
        "--repository-poll-secs",
        str(config.repository_poll_secs),
        f"--exit-on-error={str(config.exit_on_error).lower()}",
        f"--strict-readiness={str(config.strict_readiness).lower()}",
        *[arg for name in config.load_model for arg in ("--load-model", name)],
        *(["--kernel-cache-dir", str(config.kernel_cache_dir)] if config.kernel_cache_dir else []),
        *[
            arg
            for name in LIMIT_SETTINGS
            for arg in (f"--{name.replace('_', '-')}", str(getattr(config, name)))
        ],
        *[
            arg
            for flag, path in (
                ("--tls-cert", config.tls_cert),
                ("--tls-key", config.tls_key),
                ("--tls-client-ca", config.tls_client_ca),
                ("--api-keys", config.api_keys),
            )
            if path is not None
            for arg in (flag, str(path))
        ],
    ]


class Supervisor:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.grpc_port = config.grpc_port or free_port(config.host)
        # every worker must bind the same ports: "any free port" is chosen once, here
        self.http_port = config.http_port if config.http_port != 0 else free_port(config.host)
        self._metrics_dir = tempfile.mkdtemp(prefix="hotwire-metrics-")
        self.devices = worker_devices(config)  # per worker index
        self._workers: dict[int, Worker] = {}
        self._stopping = threading.Event()
        self._signals = 0
        self._failed_starts: dict[int, int] = {}  # worker index -> exits in a row before it ever listened
        self._gave_up = False
        self.restarts = 0

    def _spawn(self, index: int) -> Worker:
        device = self.devices[index]
        env = worker_environment(dict(os.environ), device, self._metrics_dir)
        ready_read, ready_write = os.pipe()
        try:
            process = subprocess.Popen(
                worker_command(self.config, self.grpc_port, self.http_port, ready_write),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
                pass_fds=(ready_write,),
            )
        except BaseException:
            os.close(ready_read)
            raise
        finally:
            os.close(ready_write)  # the worker holds it now: its exit closes the pipe
        worker = Worker(index, process, time.monotonic(), device)
        assert process.stdout is not None
        threading.Thread(target=self._forward, args=(worker, process.stdout), daemon=True).start()
        threading.Thread(target=self._hear_listening, args=(worker, ready_read), daemon=True).start()
        log.info(
            "worker %d started (pid %d)%s",
            index,
            process.pid,
            f" on CUDA device {device} (CUDA_VISIBLE_DEVICES)" if device is not None else "",
        )
        return worker

    @staticmethod
    def _hear_listening(worker: Worker, ready_read: int) -> None:
        if readiness.wait(ready_read) is not None:
            worker.listening.set()

    def _forward(self, worker: Worker, stream: IO[str]) -> None:
        for line in stream:
            sys.stderr.write(self._tagged(worker.index, line))
        stream.close()

    def _tagged(self, index: int, line: str) -> str:
        """A worker's log line as the supervisor writes it: `[worker i] ` before it, or with --log-format json
        a `worker` field in it (a line that is not JSON, e.g. a crash's traceback, becomes the message of
        one), so every line stays one JSON object."""
        if self.config.log_format != "json":
            return f"[worker {index}] {line}"
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            record = {"level": "INFO", "logger": "hotwire.workers", "message": line.rstrip("\n")}
        record["worker"] = index
        return json.dumps(record) + "\n"

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second %s: killing workers", signal.Signals(signum).name)
            for worker in self._workers.values():
                worker.process.kill()
            os._exit(1)
        log.info("received %s: stopping %d workers", signal.Signals(signum).name, len(self._workers))
        self._stopping.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        metrics_server = None
        for frontend, port in (("gRPC", self.grpc_port), ("HTTP", self.http_port)):
            problem = port_in_use(self.config.host, port) if port >= 0 else None
            if problem is not None:
                log.error("hotwire: %s: %s (is another server using it?)", frontend, problem)
                return 1
        # the workers read these files too; checked here first so a wrong one stops the start once (exit 2)
        tls = TlsFiles.from_flags(self.config.tls_cert, self.config.tls_key, self.config.tls_client_ca)
        keys = AccessPolicy.from_file(self.config.api_keys)
        warning = exposure_warning(self.config.host, tls is not None, keys.uses_keys)
        if warning:
            log.warning("%s", warning)
        try:
            if self.config.metrics_port >= 0:
                metrics_server = self._serve_metrics()
            for index in range(len(self.devices)):  # one at a time: a failed spawn leaves the others known
                self._workers[index] = self._spawn(index)
            self._announce_when_listening(metrics_server.server_port if metrics_server else None)
            while not self._stopping.wait(POLL_S):
                self._restart_exited()
            code = self._stop_all()
            return 1 if self._gave_up else code
        except BaseException:
            self._stop_all()  # never leave workers (in their own sessions) running, holding the ports
            raise
        finally:
            if metrics_server is not None:
                metrics_server.shutdown()
                metrics_server.server_close()
            shutil.rmtree(self._metrics_dir, ignore_errors=True)

    def _serve_metrics(self):  # type: ignore[no-untyped-def]
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir  # before prometheus-client is imported
        from hotwire.server.metrics import Metrics, start_metrics_server

        tls = TlsFiles.from_flags(self.config.tls_cert, self.config.tls_key, self.config.tls_client_ca)
        return start_metrics_server(
            self.config.host,
            self.config.metrics_port,
            Metrics.multiprocess_exposition(self._worker_rows),
            tls.server_context() if tls else None,
        )

    def _worker_rows(self) -> list[tuple[int, str, int]]:
        """(index, device, pid) of each live worker, for hotwire_worker_info; read on the metrics thread."""
        return [
            (w.index, w.device if w.device is not None else "", w.process.pid)
            for w in list(self._workers.values())
            if w.process.poll() is None
        ]

    def _announce_when_listening(self, metrics_port: int | None) -> None:
        def wait() -> None:
            # per index, the current worker: one restarted before it listened is a new Worker (a new event)
            for index in range(len(self.devices)):
                while not self._stopping.is_set() and not self._workers[index].listening.wait(POLL_S):
                    pass
            if not self._stopping.is_set():
                log.info(
                    "hotwire listening on %s:%d (gRPC, %d workers%s)%s%s",
                    self.config.host,
                    self.grpc_port,
                    len(self.devices),
                    f" on devices {','.join(self.config.devices)}" if self.config.devices else "",
                    f", HTTP on :{self.http_port}" if self.http_port >= 0 else "",
                    f", metrics on :{metrics_port}/metrics" if metrics_port else "",
                )
                if self.config.ready_fd >= 0:
                    readiness.announce(
                        self.config.ready_fd,
                        readiness.Listening(
                            os.getpid(),
                            self.grpc_port,
                            self.http_port,
                            metrics_port if metrics_port is not None else -1,
                        ),
                    )

        threading.Thread(target=wait, daemon=True).start()

    def _restart_exited(self) -> None:
        for index, worker in list(self._workers.items()):
            code = worker.process.poll()
            if code is None or self._stopping.is_set():
                continue
            self._mark_dead(worker.process.pid)
            failed = 0 if worker.listening.is_set() else self._failed_starts.get(index, 0) + 1
            self._failed_starts[index] = failed
            how = f"signal {-code}" if code < 0 else f"status {code}"
            if failed and code == STARTUP_REFUSED_EXIT:
                log.error("worker %d refused to start as configured (see its log above); stopping", index)
                self._gave_up = True
                self._stopping.set()
                return
            if failed >= MAX_FAILED_STARTS:
                log.error(
                    "worker %d exited with %s before it was listening, %d times in a row: the server cannot "
                    "start (see the worker's log above); stopping",
                    index,
                    how,
                    failed,
                )
                self._gave_up = True
                self._stopping.set()
                return
            log.error("worker %d (pid %d) exited with %s; restarting it", index, worker.process.pid, how)
            if time.monotonic() - worker.started_at < RESTART_WINDOW_S:
                time.sleep(RESTART_BACKOFF_S)  # a worker that dies at once must not spin
            self.restarts += 1
            try:
                self._workers[index] = self._spawn(index)
            except OSError:  # e.g. no memory or processes left to fork: try again on the next round
                log.exception("worker %d could not be restarted; retrying", index)

    def _mark_dead(self, pid: int) -> None:
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self._metrics_dir)

    def _stop_all(self) -> int:
        for worker in self._workers.values():
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.shutdown_grace_s + 15
        failed = False
        for worker in self._workers.values():
            try:
                code = worker.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                code = worker.process.wait()
            failed |= code != 0
        log.info("all workers stopped")
        return 1 if failed else 0
