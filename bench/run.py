"""Side-by-side benchmark: hotwire vs. the ``inline`` and ``echo`` reference servers, same models, same
client.

    python -m hotwire.bench.run [--models classifier,wide_mlp,small_mlp,convnet] [--concurrency 1,4,16,64]
                                [--repeats 3]
                                [--window-ms 2000] [--client perf_analyzer|loadgen|auto]
                                [--output bench/RESULTS.md] [--hotwire-arg=--FLAG=VALUE ...]

What it does, in order:

1. writes a temporary Triton-layout repository with the chosen models and the hotwire configs of
   ``HOTWIRE_CONFIGS`` (below);
2. measures the in-process ORT p50 of one single-row call per model (hotwire's default thread settings);
3. starts ``hotwire serve`` on the repository, and per model an ``inline`` and an ``echo`` reference server,
   all subprocesses on 127.0.0.1 ephemeral ports;
4. for each model, concurrency and repeat, runs the client against hotwire, inline and echo interleaved,
   rotating the order each repeat so that slow drifts of a noisy machine spread evenly over the three servers;
5. writes medians over repeats and the ratios into the output file, between ``<!-- bench:run:start -->`` and
   ``<!-- bench:run:end -->`` (other sections are left alone), and prints the same Markdown.

The client is perf_analyzer when ``hotwire.bench.perf_analyzer.locate()`` finds it runnable, else
``hotwire.bench.loadgen``. Every step has a timeout and every child process is stopped on the way out.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import numpy as np
import onnx

from hotwire.bench import loadgen, models, perf_analyzer

__all__ = ["HOTWIRE_CONFIGS", "MODELS", "main", "render_section", "replace_section"]

# hotwire's config.pbtxt for each benchmark model. Inputs and outputs are completed from the graph; tune here.
HOTWIRE_CONFIGS: dict[str, str] = {
    "classifier": """\
name: "classifier"
platform: "onnxruntime_onnx"
max_batch_size: 64
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
""",
    "wide_mlp": """\
name: "wide_mlp"
platform: "onnxruntime_onnx"
max_batch_size: 64
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
""",
    "small_mlp": """\
name: "small_mlp"
platform: "onnxruntime_onnx"
max_batch_size: 64
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
""",
    "convnet": """\
name: "convnet"
platform: "onnxruntime_onnx"
max_batch_size: 64
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
""",
}


@dataclass(frozen=True)
class BenchModel:
    build: Callable[[], onnx.ModelProto]
    input_name: str
    row_shape: tuple[int, ...]  # one request = one row: shape [1, *row_shape]


MODELS: dict[str, BenchModel] = {
    "classifier": BenchModel(models.small_classifier, "input", (16,)),
    "wide_mlp": BenchModel(models.wide_mlp, "input", (512,)),
    "small_mlp": BenchModel(models.small_mlp, "input", (64,)),  # the tiny-model pair with the classifier
    "convnet": BenchModel(models.convnet, "input", (3, 224, 224)),
}

SERVERS = ("hotwire", "inline", "echo")
HTTP_SERVERS = ("hotwire", "inline-http")  # perf_analyzer -i http: hotwire's HTTP port against the naive one
START_MARKER = "<!-- bench:run:start -->"
END_MARKER = "<!-- bench:run:end -->"
HOST = "127.0.0.1"  # servers and clients stay on loopback
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")
METRICS_PORT = re.compile(r"metrics on :(\d+)")
HTTP_PORT = re.compile(r"HTTP on :(\d+)")
SERVER_START_TIMEOUT_S = 120.0
SERVER_STOP_TIMEOUT_S = 15.0
# perf_analyzer: stable when the last 3 windows agree within PA_STABILITY %, else up to PA_MAX_TRIALS windows.
# On a noisy machine that can fail; the retry takes 3 windows whatever their spread and the result is marked
# "~".
PA_STABILITY = "25"
PA_MAX_TRIALS = 6
PA_RETRY = ["--stability-percentage", "1000", "--max-trials", "3"]


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- child
# processes


class ChildServer:
    """A server subprocess; its output is drained on a thread (and kept) and its port read from the log."""

    def __init__(self, label: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        self.label = label
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self.lines: list[str] = []
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.http_port: int | None = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, name=f"{label}-log", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if len(self.lines) < 10_000:
                self.lines.append(line)
            match = LISTENING.search(line)
            if match and self.port is None and not line.startswith("[worker"):
                self.port = int(match.group(1))
                metrics = METRICS_PORT.search(line)
                self.metrics_port = int(metrics.group(1)) if metrics else None
                http = HTTP_PORT.search(line)
                self.http_port = int(http.group(1)) if http else None
                self._ready.set()
        self._ready.set()  # EOF: the process is gone

    def wait_listening(self, timeout: float = SERVER_START_TIMEOUT_S) -> str:
        self._ready.wait(timeout)
        if self.port is None:
            tail = "".join(self.lines[-30:])
            raise RuntimeError(
                f"{self.label} did not start within {timeout:.0f} s (exit {self.proc.poll()}):\n{tail}"
            )
        return f"{HOST}:{self.port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                log(f"{self.label} ignored SIGTERM for {SERVER_STOP_TIMEOUT_S:.0f} s; killing it")
                self.proc.kill()
                self.proc.wait(SERVER_STOP_TIMEOUT_S)
        self._reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def hotwire_argv(repository: Path, extra: Sequence[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hotwire.server",
        "serve",
        "--model-repository",
        str(repository),
        "--host",
        HOST,
        "--grpc-port",
        "0",
        "--http-port",
        "0",
        "--metrics-port",
        "0",
        *extra,
    ]


def reference_argv(kind: str, model_file: Path, name: str, threads: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hotwire.bench.reference_servers",
        kind,
        "--model",
        str(model_file),
        "--name",
        name,
        "--host",
        HOST,
        "--port",
        "0",
        "--threads",
        str(threads),
    ]


# ---------------------------------------------------------------------------------------------- measurements


@dataclass(frozen=True)
class Sample:
    throughput: float
    p50_us: float
    p99_us: float
    unstable: bool = False  # perf_analyzer could not stabilise; measured anyway over 3 windows


@dataclass
class Cell:
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def median(self, attr: str) -> float | None:
        values = [getattr(s, attr) for s in self.samples]
        return statistics.median(values) if values else None


class Client:
    """Runs one measurement (one concurrency level, one server) with perf_analyzer or loadgen."""

    def __init__(self, kind: str, window_ms: int, tool: perf_analyzer.PerfAnalyzer | None) -> None:
        self.kind = kind
        self.window_ms = window_ms
        self.tool = tool

    def describe(self) -> str:
        if self.kind == "perf_analyzer":
            assert self.tool is not None
            return (
                f"perf_analyzer ({perf_analyzer_version(self.tool)}), gRPC, `--input-data zero`, batch 1, "
                f"`-p {self.window_ms}`, `--stability-percentage {PA_STABILITY} --max-trials "
                f"{PA_MAX_TRIALS}` "
                f"(3 stable windows merged)"
            )
        return (
            "hotwire.bench.loadgen (closed loop, grpc.aio, one channel, pre-serialized request, zeros, "
            "batch 1), "
            f"{self.window_ms} ms window after {self.warmup_s():.1f} s warm-up"
        )

    def warmup_s(self) -> float:
        return min(1.0, self.window_ms / 2000)

    def measure(
        self, model: str, url: str, concurrency: int, bench: BenchModel, protocol: str = "grpc"
    ) -> Sample:
        if self.kind == "perf_analyzer":
            assert self.tool is not None
            timeout = (PA_MAX_TRIALS + 2) * self.window_ms / 1000 + 120
            extra = [
                "--input-data",
                "zero",
                "--stability-percentage",
                PA_STABILITY,
                "--max-trials",
                str(PA_MAX_TRIALS),
            ]
            try:
                rows = perf_analyzer.measure(
                    self.tool, model, url, [concurrency], self.window_ms, extra, timeout, protocol
                )
                unstable = False
            except RuntimeError as exc:
                if "stable measurement" not in str(exc):
                    raise
                extra = ["--input-data", "zero", *PA_RETRY]
                rows = perf_analyzer.measure(
                    self.tool, model, url, [concurrency], self.window_ms, extra, timeout, protocol
                )
                unstable = True
            row = rows[0]
            return Sample(row.throughput, row.p50_us, row.p99_us, unstable)
        if protocol != "grpc":
            raise RuntimeError("hotwire.bench.loadgen speaks gRPC only: HTTP needs perf_analyzer")
        inputs = {bench.input_name: np.zeros((1, *bench.row_shape), dtype=np.float32)}
        result = loadgen.run_load(url, model, inputs, concurrency, self.window_ms / 1000, self.warmup_s())
        if result.errors:
            raise RuntimeError(f"loadgen: {result.errors} failed calls")
        return Sample(result.throughput, result.p50_us, result.p99_us)


def measure_cell(
    client: Client,
    cell: Cell,
    label: str,
    model: str,
    url: str,
    concurrency: int,
    bench: BenchModel,
    protocol: str = "grpc",
) -> bool:
    """One measurement into `cell` (a failure is kept as the cell's error); True when it succeeded."""
    try:
        sample = client.measure(model, url, concurrency, bench, protocol)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        message = str(exc).strip().splitlines()
        cell.errors.append(message[0] if message else type(exc).__name__)
        log(f"{label}: FAILED {exc}")
        return False
    cell.samples.append(sample)
    log(
        f"{label}: {sample.throughput:,.0f} inf/s, p50 {sample.p50_us:,.0f} µs, p99 {sample.p99_us:,.0f} µs"
        + (" (unstable)" if sample.unstable else "")
    )
    return True


def perf_analyzer_version(tool: perf_analyzer.PerfAnalyzer) -> str:
    try:
        probe = subprocess.run(
            [tool.path, "--version"], capture_output=True, text=True, env=tool.env, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "version unknown"
    match = re.search(r"Version (\S+)", probe.stdout + probe.stderr)
    return match.group(1) if match else "version unknown"


def ort_p50_us(
    model_file: Path, bench: BenchModel, threads: int, min_calls: int = 200, min_s: float = 0.5
) -> float:
    """Median in-process session.run of one row, with hotwire's default session settings."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    so.log_severity_level = 3
    session = ort.InferenceSession(str(model_file), sess_options=so, providers=["CPUExecutionProvider"])
    feeds = {bench.input_name: np.zeros((1, *bench.row_shape), dtype=np.float32)}
    for _ in range(20):
        session.run(None, feeds)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_s:
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
        if time.perf_counter() - start > 60:  # bound: a pathological machine still finishes
            break
    return statistics.median(times) * 1e6


def scrape(port: int) -> dict[tuple[str, str], float]:
    """hotwire's /metrics as {(family, model): value}, summed over versions."""
    import urllib.request

    body = urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=10).read().decode()
    values: dict[tuple[str, str], float] = {}
    for name, model, value in re.findall(
        r'^(\w+)\{model="([^"]+)",version="[^"]+"\} (\S+)$', body, re.MULTILINE
    ):
        values[(name, model)] = values.get((name, model), 0.0) + float(value)
    return values


def server_overhead_us(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float], model: str
) -> float | None:
    """Mean (request bytes in -> response bytes out) minus mean ORT compute, per request, over a window."""

    def delta(name: str) -> float:
        return after.get((name, model), 0.0) - before.get((name, model), 0.0)

    count, success = delta("hotwire_request_handler_count"), delta("nv_inference_request_success")
    if count <= 0 or success <= 0:
        return None
    return (
        delta("hotwire_request_handler_duration_us") / count
        - delta("nv_inference_compute_infer_duration_us") / success
    )


def rss_mib(pid: int) -> float | None:
    """Resident memory of a process and its children (the --workers supervisor's workers), MiB."""
    total = 0.0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
        for p in pids:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
    except OSError:
        return None
    return total


def default_threads() -> int:
    """hotwire's default intra-op threads for one instance: half the cores."""
    return max(1, (os.cpu_count() or 1) // 2)


# ---------------------------------------------------------------------------------------------- report


def machine_info() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import grpc
    import onnxruntime as ort

    return {
        "cpu": cpu,
        "cores": str(os.cpu_count() or 1),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "grpc": grpc.__version__,
        "numpy": np.__version__,
    }


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "error"
    return f"{value:,.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return "—"
    return f"{a / b:.2f}"


def render_section(
    info: dict[str, str],
    command: str,
    client: str,
    window_ms: int,
    repeats: int,
    inline_threads: int,
    hotwire_args: Sequence[str],
    ort_p50: dict[str, float],
    cells: dict[tuple[str, int, str], Cell],
    model_names: Sequence[str],
    concurrencies: Sequence[int],
    overhead: dict[str, list[float]] | None = None,
    memory: dict[str, float | None] | None = None,
    section: str = "",
    http_cells: dict[tuple[str, int, str], Cell] | None = None,
    http_models: Sequence[str] = (),
    http_concurrencies: Sequence[int] = (),
) -> str:
    start_marker, end_marker = markers(section)
    lines = [
        start_marker,
        "## Side by side: hotwire vs. inline vs. echo",
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores; {info['date']}",
        (
            f"- versions: python {info['python']}, onnxruntime {info['onnxruntime']}, grpcio {info['grpc']}, "
            f"numpy {info['numpy']}"
        ),
        f"- command: `{command}`",
        f"- client: {client}",
        (
            f"- window {window_ms} ms, {repeats} repeat(s) per cell, servers interleaved with the order "
            "rotated each "
            "repeat; every number is the median over repeats"
        ),
        "- hotwire: `max_batch_size: 64`, `dynamic_batching { }`, one KIND_CPU instance, default session "
        "options" + (f", extra flags `{' '.join(hotwire_args)}`" if hotwire_args else ""),
        (
            f"- inline: one ORT session, {inline_threads} intra-op thread(s), spinning off, `session.run` in "
            "the "
            "handler; echo: zeros, no inference (the transport floor); one process per model for each"
        ),
        "- in-process ORT p50, one row ("
        + f"{default_threads()} intra-op thread(s), spinning off): "
        + ", ".join(f"{name} {_num(ort_p50.get(name), 1)} µs" for name in model_names),
        "",
        (
            "| model | conc. | hotwire inf/s | inline inf/s | echo inf/s | hotwire p50 / p99 µs | inline p50 "
            "/ p99 µs "
            "| echo p50 / p99 µs | hotwire / inline thr. | hotwire / echo thr. | hotwire p50 / (echo p50 + "
            "ORT p50) |"
        ),
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    errors: list[str] = []
    unstable = False
    for name in model_names:
        for c in concurrencies:
            row = [name, str(c)]
            thr = {s: cells[(name, c, s)].median("throughput") for s in SERVERS}
            p50 = {s: cells[(name, c, s)].median("p50_us") for s in SERVERS}
            p99 = {s: cells[(name, c, s)].median("p99_us") for s in SERVERS}
            for s in SERVERS:
                mark = "~" if any(x.unstable for x in cells[(name, c, s)].samples) else ""
                unstable = unstable or bool(mark)
                row.append(mark + _num(thr[s]))
            for s in SERVERS:
                row.append(f"{_num(p50[s])} / {_num(p99[s])}")
            row.append(_ratio(thr["hotwire"], thr["inline"]))
            row.append(_ratio(thr["hotwire"], thr["echo"]))
            if c == 1 and p50["echo"] is not None and name in ort_p50:
                row.append(_ratio(p50["hotwire"], p50["echo"] + ort_p50[name]))
            else:
                row.append("—")
            lines.append("| " + " | ".join(row) + " |")
            for s in SERVERS:
                errors += [f"{name} c={c} {s}: {e}" for e in cells[(name, c, s)].errors]
    if http_models and http_cells:
        lines += [
            "",
            "HTTP/REST, perf_analyzer `-i http` (binary tensors), same settings: hotwire's HTTP port "
            "against `inline-http`, the inline reference over the same HTTP stack (uvicorn + httptools):",
            "",
            "| model | conc. | hotwire inf/s | inline-http inf/s | hotwire p50 / p99 µs | inline-http p50 / "
            "p99 µs "
            "| hotwire / inline-http thr. | hotwire HTTP / gRPC thr. |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name in http_models:
            for c in http_concurrencies:
                got = {s: http_cells[(name, c, s)] for s in HTTP_SERVERS}
                thr = {s: got[s].median("throughput") for s in HTTP_SERVERS}
                marks = {s: "~" if any(x.unstable for x in got[s].samples) else "" for s in HTTP_SERVERS}
                unstable = unstable or any(marks.values())
                grpc_thr = (
                    cells[(name, c, "hotwire")].median("throughput")
                    if (name, c, "hotwire") in cells
                    else None
                )
                lines.append(
                    "| "
                    + " | ".join(
                        [
                            name,
                            str(c),
                            marks["hotwire"] + _num(thr["hotwire"]),
                            marks["inline-http"] + _num(thr["inline-http"]),
                            *(
                                f"{_num(got[s].median('p50_us'))} / {_num(got[s].median('p99_us'))}"
                                for s in HTTP_SERVERS
                            ),
                            _ratio(thr["hotwire"], thr["inline-http"]),
                            _ratio(thr["hotwire"], grpc_thr),
                        ]
                    )
                    + " |"
                )
                for s in HTTP_SERVERS:
                    errors += [f"HTTP {name} c={c} {s}: {e}" for e in got[s].errors]
    if unstable:
        lines += [
            "",
            "`~`: perf_analyzer could not stabilise within the trials; measured over 3 windows anyway.",
        ]
    if overhead:
        lines += [
            "",
            "Server-side overhead at concurrency 1, measured inside hotwire (request bytes in → response "
            "bytes out, minus ORT compute; median over repeats of each window's mean): "
            + ", ".join(f"{m} {_num(statistics.median(v), 0)} µs" for m, v in overhead.items() if v),
        ]
    if memory:
        lines += [
            "",
            "hotwire resident memory (MiB, workers included): "
            + ", ".join(f"{k} {_num(v, 0)}" for k, v in memory.items()),
        ]
    if errors:
        lines += ["", "Failed measurements:", ""] + [f"- {e}" for e in errors]
    lines.append(end_marker)
    return "\n".join(lines) + "\n"


def markers(section: str) -> tuple[str, str]:
    if not section:
        return START_MARKER, END_MARKER
    return f"<!-- bench:run:{section}:start -->", f"<!-- bench:run:{section}:end -->"


def replace_section(path: Path, section: str, name: str = "") -> None:
    """Replace the marked section of ``path`` (creating the file if missing); the rest of the file is kept."""
    start_marker, end_marker = markers(name)
    text = path.read_text() if path.exists() else "# hotwire benchmark results\n\n"
    start, end = text.find(start_marker), text.find(end_marker)
    if start != -1 and end != -1 and end > start:
        text = text[:start] + section.rstrip("\n") + text[end + len(end_marker) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    if not text.endswith("\n"):
        text += "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ---------------------------------------------------------------------------------------------- main


def _int_list(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected a comma-separated list of positive integers, got '{text}'"
        )
    return values


def _model_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in MODELS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hotwire.bench.run",
        description="hotwire vs. inline and echo reference servers, side by side.",
    )
    parser.add_argument(
        "--models", type=_model_list, default=list(MODELS), help="comma-separated model names"
    )
    parser.add_argument(
        "--concurrency", type=_int_list, default=[1, 4, 16, 64], help="comma-separated levels"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--http-models",
        type=_model_list,
        default=["classifier"],
        help="models also measured over HTTP (perf_analyzer -i http; needs perf_analyzer)",
    )
    parser.add_argument(
        "--http-concurrency", type=_int_list, default=[1, 16], help="levels for the HTTP rows"
    )
    parser.add_argument("--window-ms", type=int, default=2000)
    parser.add_argument("--client", choices=("perf_analyzer", "loadgen", "auto"), default="auto")
    parser.add_argument("--output", type=Path, default=Path("bench/RESULTS.md"))
    parser.add_argument(
        "--inline-threads",
        type=int,
        default=default_threads(),
        help="intra-op threads of the inline server (default: hotwire's default, half the cores)",
    )
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=0.5,
        help="loadgen warm-up per server and model before measuring (0 turns it off)",
    )
    parser.add_argument(
        "--section", default="", help="name of the results section (several runs side by side)"
    )
    parser.add_argument(
        "--hotwire-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for `hotwire serve`, e.g. --hotwire-arg=--log-level=WARNING",
    )
    return parser


class _Terminated(Exception):
    pass


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Terminated(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.repeats < 1 or args.window_ms < 100:
        print("run: --repeats must be >= 1 and --window-ms >= 100", file=sys.stderr)
        return 2
    tool, why = perf_analyzer.locate() if args.client != "loadgen" else (None, "not asked for")
    if args.client == "perf_analyzer" and tool is None:
        print(f"run: perf_analyzer cannot run here: {why}", file=sys.stderr)
        return 2
    client = Client("perf_analyzer" if tool is not None else "loadgen", args.window_ms, tool)
    if tool is None and args.client == "auto":
        log(f"perf_analyzer unavailable ({why}); using loadgen")
    command = "python -m hotwire.bench.run " + shlex.join(list(argv) if argv is not None else sys.argv[1:])
    info = machine_info()
    cells: dict[tuple[str, int, str], Cell] = {
        (m, c, s): Cell() for m in args.models for c in args.concurrency for s in SERVERS
    }
    # perf_analyzer -i http rows: the HTTP frontend against the inline HTTP reference
    # (loadgen speaks gRPC only)
    http_models = [m for m in args.http_models if m in args.models] if client.kind == "perf_analyzer" else []
    http_cells: dict[tuple[str, int, str], Cell] = {
        (m, c, s): Cell() for m in http_models for c in args.http_concurrency for s in HTTP_SERVERS
    }
    ort_p50: dict[str, float] = {}
    overhead: dict[str, list[float]] = {name: [] for name in args.models}
    memory: dict[str, float | None] = {}
    children: list[ChildServer] = []
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with tempfile.TemporaryDirectory(prefix="hotwire-bench-") as tmp:
            repository = Path(tmp) / "models"
            models.write_model_repository(
                repository, {name: (MODELS[name].build(), HOTWIRE_CONFIGS[name]) for name in args.models}
            )
            files = {name: repository / name / "1" / "model.onnx" for name in args.models}
            for name in args.models:
                ort_p50[name] = ort_p50_us(files[name], MODELS[name], default_threads())
                log(f"in-process ORT p50 {name}: {ort_p50[name]:.1f} µs")

            hotwire = ChildServer("hotwire", hotwire_argv(repository, args.hotwire_arg))
            children.append(hotwire)
            hotwire_url = hotwire.wait_listening()
            log(f"hotwire listening on {hotwire_url} (gRPC), :{hotwire.http_port} (HTTP)")
            if http_models and hotwire.http_port is None:
                raise RuntimeError("hotwire did not say which HTTP port it listens on")
            time.sleep(1.0)
            memory["idle"] = rss_mib(hotwire.proc.pid)
            for name in args.models:
                refs = {
                    kind: ChildServer(
                        f"{kind}[{name}]", reference_argv(kind, files[name], name, args.inline_threads)
                    )
                    for kind in ("inline", "echo")
                }
                children.extend(refs.values())
                urls = {"hotwire": hotwire_url, **{kind: ref.wait_listening() for kind, ref in refs.items()}}
                bench = MODELS[name]
                if args.warmup_s > 0:
                    inputs = {bench.input_name: np.zeros((1, *bench.row_shape), dtype=np.float32)}
                    for server in SERVERS:
                        loadgen.run_load(
                            urls[server], name, inputs, max(args.concurrency), args.warmup_s, 0.0
                        )
                for c in args.concurrency:
                    for repeat in range(args.repeats):
                        order = SERVERS[repeat % 3 :] + SERVERS[: repeat % 3]
                        for server in order:
                            cell = cells[(name, c, server)]
                            watch = server == "hotwire" and c == 1 and hotwire.metrics_port is not None
                            if watch:
                                time.sleep(1.2)  # multiprocess workers publish every second
                                before = scrape(hotwire.metrics_port)  # type: ignore[arg-type]
                            measured_ok = measure_cell(
                                client,
                                cell,
                                f"{name} c={c} #{repeat + 1} {server}",
                                name,
                                urls[server],
                                c,
                                MODELS[name],
                            )
                            if watch and measured_ok:
                                time.sleep(1.2)
                                measured = server_overhead_us(before, scrape(hotwire.metrics_port), name)  # type: ignore[arg-type]
                                if measured is not None:
                                    overhead[name].append(measured)
                for ref in refs.values():
                    ref.stop()
                memory[f"after {name}"] = rss_mib(hotwire.proc.pid)
            for name in http_models:
                reference = ChildServer(
                    f"inline-http[{name}]",
                    reference_argv("inline-http", files[name], name, args.inline_threads),
                )
                children.append(reference)
                urls = {"hotwire": f"{HOST}:{hotwire.http_port}", "inline-http": reference.wait_listening()}
                for c in args.http_concurrency:
                    for repeat in range(args.repeats):
                        order = HTTP_SERVERS[repeat % 2 :] + HTTP_SERVERS[: repeat % 2]
                        for server in order:
                            measure_cell(
                                client,
                                http_cells[(name, c, server)],
                                f"HTTP {name} c={c} #{repeat + 1} {server}",
                                name,
                                urls[server],
                                c,
                                MODELS[name],
                                "http",
                            )
                reference.stop()
    except (KeyboardInterrupt, _Terminated):
        log("interrupted; stopping servers")
        return 130
    except RuntimeError as exc:  # a server that did not start
        log(str(exc))
        return 1
    finally:
        for child in children:
            try:
                child.stop()
            except (OSError, subprocess.SubprocessError) as exc:  # keep stopping the others
                log(f"could not stop {child.label}: {exc}")
        signal.signal(signal.SIGTERM, previous)

    section = render_section(
        info,
        command,
        client.describe(),
        args.window_ms,
        args.repeats,
        args.inline_threads,
        args.hotwire_arg,
        ort_p50,
        cells,
        args.models,
        args.concurrency,
        overhead,
        memory,
        args.section,
        http_cells,
        http_models,
        args.http_concurrency,
    )
    replace_section(args.output, section, args.section)
    print(section)
    log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
