"""Client benchmark: hotwire's client (`hotwire.clients`) against tritonclient.grpc, same model, same input,
same process layout.

    python -m hotwire.bench.client [--servers echo,hotwire] [--concurrency 16] [--repeats 5] [--window-s 2]
                                   [--warmup-s 0.5] [--client-cpu 0] [--server-cpu 1]
                                   [--output bench/RESULTS.md]

The model is a small MLP (FP32 [batch, 64] → 256 → 256 → 10); every call sends one row, the same array each
call, and reads the output as a NumPy array. Against each server, in turn:

* ``echo`` (hotwire.bench.reference_servers: zeros, no inference, the cheapest server on this stack): one
  thread (client CPU time per call, p50 latency), ``--concurrency`` threads sharing one client, and
  ``--concurrency`` asyncio tasks on one event loop;
* ``hotwire`` (``hotwire serve`` on a temporary repository, the MLP with ``HOTWIRE_CONFIG``):
  ``--concurrency`` threads and ``--concurrency`` asyncio tasks.

Each load is measured with three clients: hotwire's `Client` / `AsyncClient` multiplexed (the default) and
unary (``multiplex=False``), and tritonclient.grpc / tritonclient.grpc.aio. The server process is pinned to
``--server-cpu`` and every measurement runs in a fresh client process of this module (``taskset``), pinned to
``--client-cpu``, so no two clients share a process, a connection or warm caches. A measurement is: a few
calls, ``--warmup-s`` of load, then a ``--window-s`` window in which calls, latencies, the client process's
CPU time (user + sys, all its threads) and the server process's CPU time are counted. Repeats are interleaved
(the order of the clients rotates each repeat); the table has medians over repeats.

Prints a Markdown section; with ``--output`` it also replaces that section of the file (between the
``client`` section markers of bench/run.py; the rest of the file is kept). Every child process has a timeout
and is stopped on the way out, on SIGINT and SIGTERM too. The defaults take about 5 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import math
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CLIENTS", "HOTWIRE_CONFIG", "Load", "Sample", "main", "mlp", "render_section"]

MODEL = "mlp"
INPUT = "input"
OUTPUT = "logits"
ROW = 64
HOTWIRE_CONFIG = """\
name: "mlp"
platform: "onnxruntime_onnx"
max_batch_size: 64
dynamic_batching { }
instance_group [ { count: 1 kind: KIND_CPU } ]
parameters { key: "intra_op_thread_count" value: { string_value: "1" } }
"""
# hotwire serve: gRPC only (no HTTP or metrics listener beside it on the server's core)
HOTWIRE_ARGS = ("--http-port", "-1", "--metrics-port", "-1")
SECTION = "client"
SERVERS = ("echo", "hotwire")
CLIENTS = ("hotwire-mux", "hotwire-unary", "tritonclient")
BASELINE = "tritonclient"
LABELS = {
    ("threads", "hotwire-mux"): "hotwire `Client` multiplexed",
    ("threads", "hotwire-unary"): "hotwire `Client` unary",
    ("threads", "tritonclient"): "`tritonclient.grpc`",
    ("asyncio", "hotwire-mux"): "hotwire `AsyncClient` multiplexed",
    ("asyncio", "hotwire-unary"): "hotwire `AsyncClient` unary",
    ("asyncio", "tritonclient"): "`tritonclient.grpc.aio`",
}
WORKER = "_measure"  # argv[0] of a client process: `python -m hotwire.bench.client _measure ...`
WARMUP_CALLS = 20  # sequential calls before the load starts: connection, stream, caches
CALL_TIMEOUT_S = 30.0
WORKER_SLACK_S = 90.0  # a client process's timeout: warm-up + window + this
SATURATED = 0.9  # a core this busy over the window is the ceiling


def log(message: str) -> None:
    print(f"[bench.client] {message}", file=sys.stderr, flush=True)


def mlp() -> Any:
    """The benchmark's model: hotwire.bench.models.small_mlp (FP32 [batch, 64] -> 256 -> 256 -> 10)."""
    from hotwire.bench import models

    return models.small_mlp()


# ---------------------------------------------------------------------------------------------- one client
# process: measures one (client, api, concurrency) against one server and prints a Sample as JSON


@dataclass(frozen=True)
class Sample:
    calls: int  # calls that finished inside the window
    window_s: float
    throughput: float  # calls per second
    p50_us: float
    p99_us: float
    cpu_us_per_call: float  # client process CPU time (user + sys, all threads) over the window / calls
    client_util: float  # client process CPU time / window (1.0: one core's worth)
    server_util: float | None  # the same for the server process (None: /proc unreadable)
    affinity: tuple[int, ...]  # the client process's CPUs


def _input() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1, ROW)).astype(np.float32)


def process_cpu_s(pid: int) -> float | None:
    """user + sys CPU seconds of a process (all its threads) and of its direct children, from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    try:
        pids = [pid] + [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        for p in pids:
            # the fields after the command name (which may hold spaces); utime and stime are fields 14, 15
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    except (OSError, ValueError, IndexError):
        return None
    return total


@dataclass
class _Window:
    """The measurement window: wall clock, client CPU and server CPU at its start and end."""

    server_pid: int
    start: tuple[float, float, float | None] = (0.0, 0.0, None)
    end: tuple[float, float, float | None] = (0.0, 0.0, None)

    def snapshot(self) -> tuple[float, float, float | None]:
        return time.perf_counter(), time.process_time(), process_cpu_s(self.server_pid)

    def sample(self, records: Sequence[Sequence[tuple[float, float]]]) -> Sample:
        (w0, c0, s0), (w1, c1, s1) = self.start, self.end
        latencies = sorted(lat for rows in records for done, lat in rows if w0 <= done < w1)
        if not latencies:
            raise RuntimeError("no call finished inside the window")
        window = w1 - w0
        calls = len(latencies)
        return Sample(
            calls=calls,
            window_s=window,
            throughput=calls / window,
            p50_us=statistics.median(latencies) * 1e6,
            p99_us=latencies[min(calls - 1, int(0.99 * calls))] * 1e6,
            cpu_us_per_call=(c1 - c0) / calls * 1e6,
            client_util=(c1 - c0) / window,
            server_util=(s1 - s0) / window if s0 is not None and s1 is not None else None,
            affinity=tuple(sorted(os.sched_getaffinity(0))),
        )


def _sync_client(kind: str, url: str) -> tuple[Callable[[], object], Callable[[], None]]:
    """(one inference call, close) for a blocking client; one client, shared by every thread."""
    x = _input()
    if kind.startswith("hotwire"):
        from hotwire.clients import Client

        client = Client(url, multiplex=kind == "hotwire-mux", timeout=CALL_TIMEOUT_S)

        def call() -> object:
            return client.infer(MODEL, {INPUT: x})[OUTPUT]

        return call, client.close
    import tritonclient.grpc as triton

    triton_client = triton.InferenceServerClient(url)

    def triton_call() -> object:
        tensor = triton.InferInput(INPUT, [1, ROW], "FP32")
        tensor.set_data_from_numpy(x)
        return triton_client.infer(MODEL, [tensor], client_timeout=CALL_TIMEOUT_S).as_numpy(OUTPUT)

    return triton_call, triton_client.close


def _async_client(
    kind: str, url: str
) -> tuple[Callable[[], Awaitable[object]], Callable[[], Awaitable[None]]]:
    """(one inference coroutine, close) for an asyncio client; made on the running loop."""
    x = _input()
    if kind.startswith("hotwire"):
        from hotwire.clients import AsyncClient

        client = AsyncClient(url, multiplex=kind == "hotwire-mux", timeout=CALL_TIMEOUT_S)

        async def call() -> object:
            return (await client.infer(MODEL, {INPUT: x}))[OUTPUT]

        return call, client.close
    import tritonclient.grpc as triton
    import tritonclient.grpc.aio as triton_aio

    triton_client = triton_aio.InferenceServerClient(url)

    async def triton_call() -> object:
        tensor = triton.InferInput(INPUT, [1, ROW], "FP32")
        tensor.set_data_from_numpy(x)
        result = await triton_client.infer(MODEL, [tensor], client_timeout=CALL_TIMEOUT_S)
        return result.as_numpy(OUTPUT)

    return triton_call, triton_client.close


def measure_threads(
    kind: str, url: str, concurrency: int, warmup_s: float, window_s: float, server_pid: int
) -> Sample:
    call, close = _sync_client(kind, url)
    window = _Window(server_pid)
    stop = threading.Event()
    records: list[list[tuple[float, float]]] = [[] for _ in range(concurrency)]
    errors: list[str] = []

    def run(rows: list[tuple[float, float]]) -> None:
        clock = time.perf_counter
        while not stop.is_set():
            started = clock()
            try:
                call()
            except Exception as exc:  # any client's error: the measurement fails with it
                errors.append(f"{type(exc).__name__}: {exc}")
                stop.set()
                return
            done = clock()
            rows.append((done, done - started))

    try:
        for _ in range(WARMUP_CALLS):
            call()
        threads = [threading.Thread(target=run, args=(rows,), daemon=True) for rows in records]
        for thread in threads:
            thread.start()
        _sleep_until(time.perf_counter() + warmup_s, stop)
        window.start = window.snapshot()
        _sleep_until(window.start[0] + window_s, stop)
        window.end = window.snapshot()
        stop.set()
        for thread in threads:
            thread.join(CALL_TIMEOUT_S + 5)
    finally:
        stop.set()
        close()
    if errors:
        raise RuntimeError(errors[0])
    return window.sample(records)


def _sleep_until(deadline: float, stop: threading.Event) -> None:
    remaining = deadline - time.perf_counter()
    if remaining > 0:
        stop.wait(remaining)


async def measure_asyncio(
    kind: str, url: str, concurrency: int, warmup_s: float, window_s: float, server_pid: int
) -> Sample:
    call, close = _async_client(kind, url)
    window = _Window(server_pid)
    stopping = False
    records: list[list[tuple[float, float]]] = [[] for _ in range(concurrency)]

    async def run(rows: list[tuple[float, float]]) -> None:
        clock = time.perf_counter
        while not stopping:
            started = clock()
            await call()
            done = clock()
            rows.append((done, done - started))

    try:
        for _ in range(WARMUP_CALLS):
            await call()
        tasks = [asyncio.ensure_future(run(rows)) for rows in records]
        failed = asyncio.ensure_future(asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION))
        await asyncio.wait([failed], timeout=warmup_s)
        window.start = window.snapshot()
        await asyncio.wait([failed], timeout=max(0.0, window.start[0] + window_s - time.perf_counter()))
        window.end = window.snapshot()
        stopping = True
        await asyncio.wait_for(failed, CALL_TIMEOUT_S + 5)
        for task in tasks:
            if task.exception() is not None:
                exc = task.exception()
                raise RuntimeError(f"{type(exc).__name__}: {exc}")
    finally:
        stopping = True
        await close()
    return window.sample(records)


def _worker(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m hotwire.bench.client {WORKER}")
    parser.add_argument("--url", required=True)
    parser.add_argument("--client", choices=CLIENTS, required=True)
    parser.add_argument("--api", choices=("threads", "asyncio"), required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--warmup-s", type=float, required=True)
    parser.add_argument("--window-s", type=float, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    args = parser.parse_args(argv)
    measure = (args.client, args.url, args.concurrency, args.warmup_s, args.window_s, args.server_pid)
    try:
        if args.api == "threads":
            sample = measure_threads(*measure)
        else:
            sample = asyncio.run(measure_asyncio(*measure))
    except Exception as exc:  # reported to the parent, which records the failed measurement
        print(f"{type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        return 1
    print(json.dumps(asdict(sample)))
    return 0


# ---------------------------------------------------------------------------------------------- the parent:
# servers, client processes, interleaved repeats, the report


@dataclass(frozen=True)
class Load:
    server: str  # "echo" or "hotwire"
    api: str  # "threads" or "asyncio"
    concurrency: int

    def describe(self) -> str:
        if self.api == "threads":
            return f"{self.concurrency} thread" + ("s" if self.concurrency > 1 else "")
        return f"{self.concurrency} asyncio task" + ("s" if self.concurrency > 1 else "")


@dataclass
class Cell:
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def median(self, attr: str) -> float | None:
        values = [getattr(s, attr) for s in self.samples if getattr(s, attr) is not None]
        return statistics.median(values) if values else None


def loads(servers: Sequence[str], concurrency: int) -> list[Load]:
    chosen: list[Load] = []
    for server in servers:
        wanted = [("threads", 1), ("threads", concurrency), ("asyncio", concurrency)]
        if server == "hotwire":
            wanted = wanted[1:]  # hotwire itself: the load it is built for
        for api, c in wanted:
            load = Load(server, api, c)
            if load not in chosen:
                chosen.append(load)
    return chosen


def pin_prefix(cpu: int | None) -> list[str]:
    """`taskset -c CPU` for a child's argv; [] (unpinned) when asked so or when that CPU can't be had."""
    if cpu is None:
        return []
    if shutil.which("taskset") is None or cpu not in os.sched_getaffinity(0):
        log(f"cannot pin to CPU {cpu} (taskset missing or CPU not allowed); running unpinned")
        return []
    return ["taskset", "-c", str(cpu)]


def measure_one(
    load: Load,
    client: str,
    url: str,
    server_pid: int,
    args: argparse.Namespace,
    prefix: Sequence[str],
) -> Sample:
    argv = [
        *prefix,
        sys.executable,
        "-m",
        "hotwire.bench.client",
        WORKER,
        "--url",
        url,
        "--client",
        client,
        "--api",
        load.api,
        "--concurrency",
        str(load.concurrency),
        "--warmup-s",
        str(args.warmup_s),
        "--window-s",
        str(args.window_s),
        "--server-pid",
        str(server_pid),
    ]
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=args.warmup_s + args.window_s + WORKER_SLACK_S,
        check=False,
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()
        raise RuntimeError(tail[-1] if tail else f"client process exited {done.returncode}")
    values = json.loads(done.stdout.strip().splitlines()[-1])
    values["affinity"] = tuple(values["affinity"])
    return Sample(**values)


def wait_model_ready(url: str, timeout: float = 120.0) -> None:
    from hotwire.clients import Client, InferenceServerError

    deadline = time.monotonic() + timeout
    with Client(url, timeout=5.0) as client:
        while True:
            try:
                if client.model_ready(MODEL):
                    return
            except InferenceServerError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"model '{MODEL}' not ready at {url} within {timeout:.0f} s")
            time.sleep(0.2)


def start_server(server: str, tmp: Path, prefix: Sequence[str]) -> Any:
    from hotwire.bench.run import ChildServer, hotwire_argv, reference_argv

    if server == "echo":
        argv = reference_argv("echo", tmp / MODEL / "1" / "model.onnx", MODEL, 1)
    else:
        argv = hotwire_argv(tmp, HOTWIRE_ARGS)
    return ChildServer(server, [*prefix, *argv])


def run_server(
    server: str,
    child: Any,
    chosen: Sequence[Load],
    cells: dict[tuple[Load, str], Cell],
    args: argparse.Namespace,
    prefix: Sequence[str],
) -> None:
    """Every load of `server` (the ChildServer `child`), every client, interleaved repeats."""
    url, server_pid = child.wait_listening(), child.proc.pid  # listening already: returns at once
    for repeat in range(args.repeats):
        order = CLIENTS[repeat % len(CLIENTS) :] + CLIENTS[: repeat % len(CLIENTS)]
        for load in chosen:
            if load.server != server:
                continue
            for client in order:
                if child.proc.poll() is not None:
                    raise RuntimeError(f"{server} exited ({child.proc.returncode}) during the benchmark")
                cell = cells[(load, client)]
                label = f"{server} {load.describe()} #{repeat + 1} {client}"
                try:
                    sample = measure_one(load, client, url, server_pid, args, prefix)
                except (RuntimeError, subprocess.TimeoutExpired, ValueError, TypeError) as exc:
                    message = str(exc).strip().splitlines()
                    cell.errors.append(message[0] if message else type(exc).__name__)
                    log(f"{label}: FAILED {exc}")
                    continue
                cell.samples.append(sample)
                if prefix and sample.affinity != (args.client_cpu,):
                    log(f"{label}: the client process ran on CPUs {list(sample.affinity)}, not pinned")
                log(
                    f"{label}: {sample.throughput:,.0f} inf/s, p50 {sample.p50_us:,.0f} µs, "
                    f"CPU {sample.cpu_us_per_call:,.0f} µs/call, client {sample.client_util:.0%}, "
                    f"server {_pct(sample.server_util)}"
                )


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "error"
    return f"{value:,.{digits}f}"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def _ratio_text(a: float | None, b: float | None) -> str:
    ratio = _ratio(a, b)
    return "—" if ratio is None else f"{ratio:.2f}"


def _limit(cell: Cell) -> str:
    client, server = cell.median("client_util"), cell.median("server_util")
    if client is None:
        return "—"
    busy = [
        name
        for name, util in (("client", client), ("server", server))
        if util is not None and util >= SATURATED
    ]
    return " + ".join(busy) + " CPU" if busy else "neither core"


def _target_line(
    what: str,
    attr: str,
    load: Load,
    cells: dict[tuple[Load, str], Cell],
    bound: float,
    at_most: bool,
    clients: Sequence[str] = ("hotwire-mux", "hotwire-unary"),
) -> str | None:
    if (load, BASELINE) not in cells:
        return None
    base = cells[(load, BASELINE)].median(attr)
    parts: list[str] = []
    for client in clients:
        ratio = _ratio(cells[(load, client)].median(attr), base)
        name = "multiplexed" if client == "hotwire-mux" else "unary"
        if ratio is None:
            parts.append(f"{name} —")
            continue
        met = ratio <= bound if at_most else ratio >= bound
        parts.append(f"{name} {ratio:.2f}× ({'met' if met else 'not met'})")
    sign = "≤" if at_most else "≥"
    return f"- {load.server}, {load.describe()}, {what}: " + ", ".join(parts) + f"; target {sign} {bound:g}×"


def render_section(
    info: dict[str, str],
    command: str,
    args: argparse.Namespace,
    chosen: Sequence[Load],
    cells: dict[tuple[Load, str], Cell],
    pinning: str,
) -> str:
    from hotwire.bench.run import markers

    start_marker, end_marker = markers(SECTION)
    lines = [
        start_marker,
        "## Client: hotwire.clients vs. tritonclient.grpc",
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores; {info['date']}",
        (
            f"- versions: python {info['python']}, grpcio {info['grpc']}, tritonclient "
            f"{info['tritonclient']}, numpy {info['numpy']}, hotwire {info['hotwire']}, "
            f"onnxruntime {info['onnxruntime']} (server)"
        ),
        f"- command: `{command}`",
        (
            "- model `mlp`: FP32 [1, 64] → 256 → 256 → 10, one row per call, the same array each call; the "
            'output read as NumPy (`result["logits"]` / `result.as_numpy("logits")`); tritonclient builds '
            "its `InferInput` and calls `set_data_from_numpy` per call, as its examples do"
        ),
        (
            "- clients: hotwire `Client(url, multiplex=True|False)`, one per process, shared by all threads "
            "(one channel); tritonclient: one `InferenceServerClient` shared by all threads (its documented "
            "usage); asyncio: one `AsyncClient` / `tritonclient.grpc.aio.InferenceServerClient`, N tasks on "
            "one event loop (asyncio's default loop)"
        ),
        f"- layout: {pinning}; every measurement in a fresh client process (no shared process, "
        "connection or caches)",
        (
            "- servers: `echo` (hotwire.bench.reference_servers: zeros, no inference; grpc.aio on uvloop, "
            "one process), the cheapest server on this stack but not free (the limit column says when its "
            f"core is the ceiling); `hotwire` (`hotwire serve {' '.join(HOTWIRE_ARGS)}`, "
            "`max_batch_size: 64`, `dynamic_batching { }`, one KIND_CPU instance, 1 intra-op thread)"
        ),
        (
            f"- {WARMUP_CALLS} calls and {args.warmup_s:g} s of load, then a {args.window_s:g} s window; "
            f"{args.repeats} repeat(s), clients interleaved with the order rotated each repeat; every number "
            "is the median over repeats"
        ),
        (
            "- client CPU µs/call: the client process's CPU time (user + sys, all its threads) over the "
            "window / calls finished in it; core %: CPU time / wall time over the window, of the client "
            "process and of the server process (100% = one core); limit: the core at "
            f"≥ {SATURATED:.0%}, if any"
        ),
        "",
        (
            "| server | load | client | inf/s | p50 µs | p99 µs | client CPU µs/call | client core | "
            "server core | limit | thr. / triton | p50 / triton | CPU / triton |"
        ),
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    errors: list[str] = []
    for load in chosen:
        base = cells[(load, BASELINE)]
        for client in CLIENTS:
            cell = cells[(load, client)]
            row = [
                load.server,
                load.describe(),
                LABELS[(load.api, client)],
                _num(cell.median("throughput")),
                _num(cell.median("p50_us")),
                _num(cell.median("p99_us")),
                _num(cell.median("cpu_us_per_call"), 1),
                _pct(cell.median("client_util")),
                _pct(cell.median("server_util")),
                _limit(cell),
            ]
            if client == BASELINE:
                row += ["1", "1", "1"] if cell.samples else ["—", "—", "—"]
            else:
                row += [
                    _ratio_text(cell.median(attr), base.median(attr))
                    for attr in ("throughput", "p50_us", "cpu_us_per_call")
                ]
            lines.append("| " + " | ".join(row) + " |")
            errors += [f"{load.server} {load.describe()} {client}: {e}" for e in cell.errors]
    targets: list[str | None] = []
    for load in chosen:
        if load.server == "echo" and load.concurrency == 1:
            targets.append(_target_line("client CPU per call", "cpu_us_per_call", load, cells, 0.7, True))
            targets.append(_target_line("p50 latency", "p50_us", load, cells, 1.0, True))
        elif load.server == "echo":
            targets.append(_target_line("throughput", "throughput", load, cells, 1.0, False))
        elif load.api == "threads":
            targets.append(
                _target_line("throughput", "throughput", load, cells, 1.5, False, ("hotwire-mux",))
            )
    shown = [t for t in targets if t]
    if shown:
        lines += ["", "Against tritonclient (ratios of the medians above):", "", *shown]
    if errors:
        lines += ["", "Failed measurements:", ""] + [f"- {e}" for e in errors]
    lines.append(end_marker)
    return "\n".join(lines) + "\n"


def _server_list(text: str) -> list[str]:
    names = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [n for n in names if n not in SERVERS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown server(s) {unknown}; choose from {', '.join(SERVERS)}")
    return names


def _cpu(text: str) -> int | None:
    return None if text in ("", "none") else int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hotwire.bench.client",
        description="hotwire's client vs. tritonclient.grpc, against the echo reference server and hotwire.",
    )
    parser.add_argument("--servers", type=_server_list, default=list(SERVERS), help="echo,hotwire")
    parser.add_argument(
        "--concurrency", type=int, default=16, help="threads / asyncio tasks of the concurrent loads"
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--window-s", type=float, default=2.0, help="measurement window per measurement")
    parser.add_argument("--warmup-s", type=float, default=0.5, help="load before each window")
    parser.add_argument("--client-cpu", type=_cpu, default=0, help="CPU of the client processes ('none')")
    parser.add_argument("--server-cpu", type=_cpu, default=1, help="CPU of the server process ('none')")
    parser.add_argument("--output", type=Path, help="also write the section into this file (its markers)")
    return parser


def machine_info() -> dict[str, str]:
    from hotwire.bench import run

    info = run.machine_info()
    for package in ("tritonclient", "hotwire"):
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = "not installed"
    return info


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [WORKER]:
        return _worker(argv[1:])
    from hotwire.bench import models
    from hotwire.bench.run import _on_sigterm, _Terminated, replace_section

    args = build_parser().parse_args(argv)
    if args.repeats < 1 or args.window_s < 0.05 or args.warmup_s < 0 or args.concurrency < 1:
        print(
            "client: --repeats and --concurrency must be >= 1, --window-s >= 0.05, --warmup-s >= 0",
            file=sys.stderr,
        )
        return 2
    command = "python -m hotwire.bench.client " + shlex.join(argv)
    client_prefix, server_prefix = pin_prefix(args.client_cpu), pin_prefix(args.server_cpu)
    server_pin = f"server process on CPU {args.server_cpu}" if server_prefix else "server process unpinned"
    client_pin = f"client process on CPU {args.client_cpu}" if client_prefix else "client process unpinned"
    pinning = f"{server_pin}, {client_pin} (taskset)"
    info = machine_info()
    chosen = loads(args.servers, args.concurrency)
    cells = {(load, client): Cell() for load in chosen for client in CLIENTS}
    children: list[Any] = []
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        with tempfile.TemporaryDirectory(prefix="hotwire-bench-client-") as tmp:
            repository = Path(tmp)
            models.write_model_repository(repository, {MODEL: (mlp(), HOTWIRE_CONFIG)})
            for server in args.servers:
                child = start_server(server, repository, server_prefix)
                children.append(child)
                url = child.wait_listening()
                wait_model_ready(url)
                log(f"{server} listening on {url} (pid {child.proc.pid})")
                run_server(server, child, chosen, cells, args, client_prefix)
                child.stop()
    except (KeyboardInterrupt, _Terminated):
        log("interrupted; stopping servers")
        return 130
    except RuntimeError as exc:  # a server that did not start, or died
        log(str(exc))
        return 1
    finally:
        for child in children:
            try:
                child.stop()
            except (OSError, subprocess.SubprocessError) as exc:  # keep stopping the others
                log(f"could not stop {child.label}: {exc}")
        signal.signal(signal.SIGTERM, previous)
    section = render_section(info, command, args, chosen, cells, pinning)
    print(section)
    if args.output is not None:
        replace_section(args.output, section, SECTION)
        log(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
