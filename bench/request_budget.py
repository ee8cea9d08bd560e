"""Where a tiny model's request time goes: hotwire's per-request budget by stage, in-process and under load.

    python -m hotwire.bench.request_budget [--calls 20000] [--repeats 3] [--concurrency 16]
                                           [--output bench/RESULTS.md]

1. In-process (no gRPC): the bundled classifier's ModelInfer bytes through each stage of hotwire's path on
   one event loop, N calls per stage: decode, route and validate, run (ONNX Runtime included, and ORT's own
   `session.run` alone), encode, accounting, and the whole `model_infer`; beside it the echo and inline
   reference servers' handlers (protobuf parse, handler, serialize), the work their gRPC layer does for them.
2. Under load, server and client on separate cores: each server pinned to CPU 1 (taskset), perf_analyzer
   (or loadgen) on CPU 0, closed loop; the server's CPU time per request (its CPU seconds over the run /
   requests it answered over the same interval: hotwire's statistics, the echo launcher's own count) for
   hotwire, echo, and three probes, the echo server plus one line per request:
   `time.sleep(0)` (releases the GIL and makes a syscall), a 4 KiB `hashlib.sha256` (releases the GIL,
   no syscall), one `session.run` of the classifier (ORT's per-call cost). hotwire's launcher here also
   times `model_infer` and `Instance.run_sync` around every request (patched in this benchmark only) to
   compare the handler's time under load with its in-process time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hotwire.bench import loadgen, models, perf_analyzer
from hotwire.bench.client import process_cpu_s
from hotwire.bench.run import (
    HOTWIRE_CONFIGS,
    MODELS,
    ChildServer,
    Client,
    hotwire_argv,
    machine_info,
    markers,
    reference_argv,
    replace_section,
)

MODEL = "classifier"
SECTION = "request-budget"
REST = "rest of model_infer (whole minus the stages above it but ORT alone)"
SERVER_CPU = "1"
CLIENT_CPU = 0

# The launchers of part 2 (run as `python -c`): hotwire with its handler and ORT call timed, and the echo
# reference with one probe line per request (PROBE: sleep0, hash, ort).
TIMED_HOTWIRE = """
import atexit, sys, time
from hotwire.server import grpc_service, runner
from hotwire.server.cli import main
handler, ort = [], []
infer = grpc_service.InferenceService.model_infer
async def model_infer(self, data, context):
    started = time.perf_counter()
    try:
        return await infer(self, data, context)
    finally:
        handler.append(time.perf_counter() - started)
grpc_service.InferenceService.model_infer = model_infer
run_sync = runner.Instance.run_sync
def timed_run(self, feeds, names):
    started = time.perf_counter()
    try:
        return run_sync(self, feeds, names)
    finally:
        ort.append(time.perf_counter() - started)
runner.Instance.run_sync = timed_run
def report():
    def p50(xs):
        xs = sorted(xs[len(xs) // 10:])  # the first tenth is warm-up
        return xs[len(xs) // 2] * 1e6 if xs else float("nan")
    print(f"budget: handler_p50_us={p50(handler):.1f} ort_p50_us={p50(ort):.1f}", flush=True)
atexit.register(report)
sys.exit(main(sys.argv[1:]))
"""

PROBED_ECHO = """
import hashlib, sys, time
import numpy as np
from hotwire.bench import reference_servers as rs
from hotwire.proto import grpc_service_pb2 as pb
probe, model = sys.argv[1], sys.argv[2]  # then the reference server's own arguments
del sys.argv[1:3]
session = rs.make_session(model, 1) if probe == "ort" else None
row = np.zeros((1, 16), np.float32)
block = b"x" * 4096  # hashlib releases the GIL above 2 KiB
infer = rs.ReferenceServicer._infer
answered = 0
def probed(self, request):
    global answered
    if probe == "sleep0":
        time.sleep(0)
    elif probe == "hash":
        hashlib.sha256(block).digest()
    elif probe == "ort":
        session.run(None, {"input": row})
    if not answered:
        print(f"probe {probe} ran", flush=True)
    answered += 1
    return infer(self, request)
rs.ReferenceServicer._infer = probed
async def server_metadata(self, request, context):  # the requests answered so far, for the bench to read
    return pb.ServerMetadataResponse(name="echo-probe", version=str(answered))
rs.ReferenceServicer.ServerMetadata = server_metadata
sys.exit(rs.main(sys.argv[1:]))
"""
PROBES = {
    "echo": "echo",  # the launcher with no probe: the baseline, counted the same way
    "sleep0": "echo + time.sleep(0)",
    "hash": "echo + sha256 of 4 KiB",
    "ort": "echo + one session.run",
}


# ------------------------------------------------------------------------------------------- in-process


async def _per_call_us(calls: int, step: Callable[[], Awaitable[Any] | Any]) -> float:
    for _ in range(min(2000, calls)):  # warm-up
        result = step()
        if asyncio.iscoroutine(result):
            await result
    started = time.perf_counter()
    for _ in range(calls):
        result = step()
        if asyncio.iscoroutine(result):
            await result
    return (time.perf_counter() - started) / calls * 1e6


class _Context:
    """What model_infer asks of a grpc.aio context on the default configuration."""

    def time_remaining(self) -> float | None:
        return None

    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


async def in_process_budget(calls: int) -> dict[str, float]:
    """µs per call of each stage of hotwire's path, and of the reference servers' handlers."""
    from hotwire.bench import reference_servers
    from hotwire.proto import grpc_service_pb2 as pb
    from hotwire.server import wire
    from hotwire.server.app import App
    from hotwire.server.config import ServerConfig
    from hotwire.server.grpc_service import _encode_unary
    from hotwire.server.stats import ComputeTimes

    with tempfile.TemporaryDirectory(prefix="hotwire-budget-") as tmp:
        repository = Path(tmp) / "models"
        bench = MODELS[MODEL]
        models.write_model_repository(repository, {MODEL: (bench.build(), HOTWIRE_CONFIGS[MODEL])})
        config = ServerConfig(
            model_repository=repository, host="127.0.0.1", grpc_port=0, http_port=-1, metrics_port=-1
        )
        app = App(config)
        await app.start()
        try:
            service, registry = app._service, app.registry
            assert service is not None
            payload = loadgen.build_request(
                MODEL, {bench.input_name: np.zeros((1, *bench.row_shape), np.float32)}
            )
            request = wire.decode_request(payload)
            version = registry.route(MODEL, "", request)

            # the version's plan cache, as ModelVersion.infer uses it (private: this benchmark times it alone)
            def validate(routed: Any, decoded: wire.InferRequest) -> Any:
                return routed._plans.validate(decoded)

            valid = validate(version, request)
            ran = version.batcher.run_now(valid.feeds, valid.rows, valid.output_names)
            assert ran is not None, "the classifier must run inline (on the loop) for this budget"
            outputs, _ = ran
            response = wire.InferResponse(MODEL, version.version_str, "", list(valid.output_names), outputs)
            session = version.instances[0].session
            feeds = valid.feeds
            names = list(valid.output_names)
            context = _Context()
            times = ComputeTimes(1e-5, 1e-5, 0.0)

            def account() -> None:  # what ModelVersion.infer and DataPlane.infer count per request
                version.stats.record_request(True, 1e-4, 0.0, times)
                version.stats.handler.add(1e-4)
                registry.after_response(version, request, response, 1e-4, True)

            stages = {
                "decode (wire.decode_request)": lambda: wire.decode_request(payload),
                "route and validate": lambda: validate(registry.route(MODEL, "", request), request),
                "run (batcher.run_now: feeds, ORT, statistics of the batch)": lambda: version.batcher.run_now(
                    valid.feeds, valid.rows, valid.output_names
                ),
                "ORT session.run alone": lambda: session.run(names, feeds),
                "encode (ResponseEncoder)": lambda: _encode_unary(version, response),
                "accounting (statistics, handler time, canary/shadow hooks)": account,
                "whole model_infer": lambda: service.model_infer(payload, context),
            }
            budget = {name: await _per_call_us(calls, step) for name, step in stages.items()}
            timed = [name for name in stages if name not in ("ORT session.run alone", "whole model_infer")]
            # admission, the response object, the coroutine and the calls between the stages
            budget[REST] = budget["whole model_infer"] - sum(budget[name] for name in timed)
        finally:
            await app.stop()
        model_file = repository / MODEL / "1" / "model.onnx"
        for kind in ("echo", "inline"):
            reference_session = reference_servers.make_session(str(model_file), 1)
            signature = reference_servers.signature_from_session(MODEL, reference_session)
            servicer = reference_servers.ReferenceServicer(
                signature, reference_session if kind == "inline" else None, kind
            )

            async def handle(servicer: Any = servicer) -> bytes:
                parsed = pb.ModelInferRequest.FromString(payload)
                answer = await servicer.ModelInfer(parsed, None)
                return bytes(answer.SerializeToString())

            budget[f"{kind} reference: parse, handler, serialize"] = await _per_call_us(calls, handle)
    return budget


# ----------------------------------------------------------------------------------------------- under load


@dataclass
class LoadSample:
    throughput: float
    cpu_us_per_request: float
    p50_us: float
    core_share: float = 0.0  # the server's CPU seconds per second over the interval (1.0: one core)
    handler_p50_us: float | None = None
    ort_p50_us: float | None = None


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of the server process (every thread, those that ended too)."""
    seconds = process_cpu_s(pid)
    if seconds is None:
        raise RuntimeError(f"cannot read the CPU time of process {pid} from /proc")
    return seconds


def _answered(url: str, label: str) -> int:
    """Requests the server has answered so far: hotwire's statistics, or the echo launcher's count."""
    from hotwire.clients import Client as InferenceClient

    with InferenceClient(url, multiplex=False) as client:
        if label == "hotwire":
            stats = client.statistics(MODEL).model_stats
            return sum(int(s.inference_stats.success.count) for s in stats)
        return int(client.server_metadata().version)


def _server(label: str, repository: Path, model_file: Path) -> ChildServer:
    pin = ["taskset", "-c", SERVER_CPU]
    if label == "hotwire":
        argv = hotwire_argv(repository, ["--http-port", "-1", "--metrics-port", "-1"])
        argv[1:3] = ["-c", TIMED_HOTWIRE]  # `python -m hotwire.server serve ...` -> `python -c ... serve ...`
        return ChildServer(label, pin + argv)
    argv = reference_argv("echo", model_file, MODEL, 1)
    argv[1:3] = ["-c", PROBED_ECHO, label, str(model_file)]
    return ChildServer(label, pin + argv)


def measure_under_load(
    client: Client, label: str, repository: Path, model_file: Path, concurrency: int
) -> LoadSample:
    server = _server(label, repository, model_file)
    try:
        url = server.wait_listening()
        client.measure(MODEL, url, concurrency, MODELS[MODEL])  # warm-up: connections, caches, arenas
        # CPU and requests over the same interval (the client's start-up and every trial included): the
        # server's CPU per request whatever share of the interval it was busy
        cpu, answered, clock = _cpu_seconds(server.proc.pid), _answered(url, label), time.perf_counter()
        sample = client.measure(MODEL, url, concurrency, MODELS[MODEL])
        used = _cpu_seconds(server.proc.pid) - cpu
        requests = _answered(url, label) - answered
        elapsed = time.perf_counter() - clock
    finally:
        server.stop()
    result = LoadSample(
        sample.throughput, used / max(1, requests) * 1e6, sample.p50_us, core_share=used / elapsed
    )
    for line in server.lines:
        found = re.search(r"budget: handler_p50_us=([\d.]+) ort_p50_us=([\d.]+)", line)
        if found:
            result.handler_p50_us, result.ort_p50_us = float(found[1]), float(found[2])
    return result


# ------------------------------------------------------------------------------------------------- report


def render(
    command: str,
    budget: dict[str, float],
    load: dict[str, list[LoadSample]],
    client: Client,
    concurrency: int,
) -> str:
    machine = machine_info()
    lines = [
        "## Where a tiny model's request time goes (issue 14, items 1 and 2)",
        "",
        f"- machine: {machine['cpu']}, {machine['cores']} cores; {machine['date']}",
        f"- versions: python {machine['python']}, onnxruntime {machine['onnxruntime']}, "
        f"grpcio {machine['grpc']}, numpy {machine['numpy']}",
        f"- command: `{command}`",
        "",
        "In-process, no gRPC (one event loop, the bundled classifier's ModelInfer bytes), µs per call:",
        "",
        "| stage | µs per call |",
        "| --- | ---: |",
        *(f"| {name} | {value:.1f} |" for name, value in budget.items()),
        "",
        f"Under load: each server pinned to CPU {SERVER_CPU}, the client ({client.describe()}) on CPU "
        f"{CLIENT_CPU} ({_siblings()}), concurrency {concurrency}; server CPU per request = its CPU "
        "seconds over the client's whole run (start-up and every trial) / the requests it answered in that "
        "interval; server core = those CPU seconds / the interval; inf/s and p50: perf_analyzer's stable "
        "windows; medians of interleaved repeats (each repeat in brackets):",
        "",
        "| server | inf/s | server CPU µs / request | server core | p50 µs | handler p50 µs (hotwire) "
        "| ORT p50 µs (hotwire) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for label, samples in load.items():
        if not samples:
            continue
        cpu = [s.cpu_us_per_request for s in samples]
        handler = [s.handler_p50_us for s in samples if s.handler_p50_us is not None]
        ort = [s.ort_p50_us for s in samples if s.ort_p50_us is not None]
        timed = (
            f"{statistics.median(handler):.0f} | {statistics.median(ort):.0f}" if handler and ort else "— | —"
        )
        lines.append(
            f"| {PROBES.get(label, label)} | {statistics.median(s.throughput for s in samples):,.0f} | "
            f"{statistics.median(cpu):.0f} ({', '.join(f'{c:.0f}' for c in cpu)}) | "
            f"{statistics.median(s.core_share for s in samples) * 100:.0f}% | "
            f"{statistics.median(s.p50_us for s in samples):,.0f} | {timed} |"
        )
    return "\n".join(lines) + "\n"


def _siblings() -> str:
    """Whether the two pinned CPUs share a physical core (hyperthreads), as the kernel reports it."""
    path = Path(f"/sys/devices/system/cpu/cpu{SERVER_CPU}/topology/thread_siblings_list")
    try:
        siblings = path.read_text().strip()
    except OSError:
        return "CPU topology unknown"
    return f"CPU {SERVER_CPU}'s hyperthread siblings: {siblings}"


def _can_pin() -> bool:
    return hasattr(os, "sched_getaffinity") and {CLIENT_CPU, int(SERVER_CPU)} <= os.sched_getaffinity(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hotwire.bench.request_budget", description=__doc__)
    parser.add_argument("--calls", type=int, default=20000, help="in-process calls per stage")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats under load (0: skip)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--window-ms", type=int, default=3000)
    parser.add_argument(
        "--probes", default="sleep0,hash,ort", help="echo probes under load (comma-separated)"
    )
    parser.add_argument(
        "--output", type=Path, help="a Markdown file to write (bench/RESULTS.md: its section)"
    )
    args = parser.parse_args(argv)
    probes = [p for p in args.probes.split(",") if p]
    unknown = [p for p in probes if p not in PROBES or p == "echo"]
    if unknown:
        parser.error(f"unknown probe(s) {unknown}; choose from sleep0, hash, ort")
    command = "python -m hotwire.bench.request_budget " + " ".join(argv if argv is not None else sys.argv[1:])

    import uvloop

    budget = uvloop.run(in_process_budget(args.calls))
    for name, value in budget.items():
        print(f"[budget] {name}: {value:.1f} µs", flush=True)

    tool, _ = perf_analyzer.locate()
    client = Client("perf_analyzer" if tool else "loadgen", args.window_ms, tool)
    labels = ["hotwire", "echo", *probes]
    load: dict[str, list[LoadSample]] = {label: [] for label in labels}
    if args.repeats:
        if not _can_pin():
            raise SystemExit(
                f"the under-load part pins the server to CPU {SERVER_CPU} and the client to CPU "
                f"{CLIENT_CPU}: this process may not run on both"
            )
        os.sched_setaffinity(0, {CLIENT_CPU})  # the client (a child of this process) inherits it
        with tempfile.TemporaryDirectory(prefix="hotwire-budget-") as tmp:
            repository = Path(tmp) / "models"
            models.write_model_repository(
                repository, {MODEL: (MODELS[MODEL].build(), HOTWIRE_CONFIGS[MODEL])}
            )
            model_file = repository / MODEL / "1" / "model.onnx"
            for repeat in range(args.repeats):
                shift = repeat % len(labels)
                for label in labels[shift:] + labels[:shift]:
                    sample = measure_under_load(client, label, repository, model_file, args.concurrency)
                    load[label].append(sample)
                    print(
                        f"[budget] {label}: {sample.throughput:,.0f} inf/s, server CPU "
                        f"{sample.cpu_us_per_request:.0f} µs/request"
                        + (f", handler p50 {sample.handler_p50_us:.0f} µs" if sample.handler_p50_us else ""),
                        flush=True,
                    )
    text = render(command, budget, load, client, args.concurrency)
    print(text)
    if args.output:
        start, end = markers(SECTION)
        replace_section(args.output, f"{start}\n{text}{end}\n", SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
