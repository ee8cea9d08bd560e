"""`hotwire bench`: latency-class benchmarks against any Open Inference Protocol (KServe V2) server, over gRPC
(`--url host:port`) or HTTP/REST (`--url http://host:port`: the binary tensor extension, aiohttp).

    hotwire bench --url localhost:8001 --model classifier --target edge
    hotwire bench --url A --url B --model M --rate 200 --arrival poisson --duration 30 --output run.json
    hotwire bench --url localhost:8001 --model M --concurrency 8 --streaming --requests 5000
    hotwire bench zoo --out DIR          # the benchmark models as a Triton-layout repository

One model (`--model`); its inputs are built from the first server's ModelMetadata (and ModelConfig, where the
server has it, for the batch dimension): random (seeded), `--zeros`, or `--input-data FILE.npz`; variable
dimensions other than the batch come from `--shape NAME=D,D,...` (else 1). Every server gets the same request
bytes. Loads:

- closed loop, `--concurrency N`: N callers back to back, latency from each call's send;
- open loop, `--rate R [--arrival constant|poisson]`: latency from each request's intended send time, so a
  stall shows in the percentiles instead of hiding behind the backlog (see hotwire.bench.traffic);
- `--target edge|streaming|p99=MS`: the capacity search of hotwire.bench.capacity, an open-loop step at a
  time, the servers' steps interleaved; a verdict and a capacity per server.

`--clients K` spreads the load over K client processes whose HDR histograms merge exactly. Every report gives
the client's CPU (in cores) and the share of requests sent late, and warns when the client was the limit or
(closed loop) when the maximum latency is over 20× the median, the mark of coordinated omission.

Floors in the same run: `--onnx MODEL.onnx` times in-process ONNX Runtime on the same batch, and
`--reference inline|echo` (repeatable, with `--onnx`) starts hotwire.bench.reference_servers on 127.0.0.1 for
the same model and measures it beside the servers given; the report gives each server's ratio to them.

Reports: a Markdown summary on stdout; `--output PATH.json` writes the run as JSON (every setting, the
machine, versions, each step's rates, percentiles, errors, late share and encoded HDR histogram), the summary
beside it (PATH.md) and, with matplotlib installed (the `[bench]` extra), PNG plots (PATH-latency.png:
percentiles against the offered rate with the class line; PATH-distribution.png: the latency distribution).
A progress
line goes to stderr while a step runs.

Exit codes: 0 done (and, with --target, every server passed), 1 a server or client failed, 2 usage,
3 a --target verdict was fail.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["add_bench_command", "build_inputs", "main"]

DEFAULT_URL = "localhost:8001"
CO_RATIO = 20.0  # closed loop: a maximum over this many medians suggests coordinated omission
# min_samples: a search step's window is long enough for this many requests, so that its p99 is not its max
FULL = {"duration_s": 10.0, "warmup_s": 2.0, "precision": 0.05, "max_steps": 16, "min_samples": 1000}
QUICK = {"duration_s": 1.5, "warmup_s": 0.5, "precision": 0.25, "max_steps": 8, "min_samples": 200}
EXIT_TARGET_MISSED = 3


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ----- inputs -----------------------------------------------------------------------------------------------


def build_inputs(
    inputs: Sequence[Any],
    batched: bool,
    batch_size: int,
    shapes: dict[str, tuple[int, ...]],
    source: str,
    seed: int = 0,
    data: dict[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Arrays for a model's inputs (TensorMetadata-likes: name, datatype, shape). `batched`: the first
    dimension is the batch (`batch_size`); other variable dimensions come from `shapes` (the dimensions after
    the batch) or are 1. `source`: "random", "zeros" or "data" (taken from `data`, by input name)."""
    from hotwire.clients.tensors import DATATYPES, random_array

    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for tensor in inputs:
        if source == "data":
            assert data is not None
            if tensor.name not in data:
                raise ValueError(f"--input-data has no array '{tensor.name}' (it has {sorted(data)})")
            arrays[tensor.name] = data[tensor.name]
            continue
        dims = list(tensor.shape)
        lead: list[int] = []
        if batched and dims:
            lead, dims = [batch_size], dims[1:]
        given = shapes.get(tensor.name)
        if given is not None:
            if len(given) != len(dims) or any(d >= 0 and d != g for d, g in zip(dims, given)):
                raise ValueError(f"--shape {tensor.name}: {list(given)} does not fit the model's {dims}")
            dims = list(given)
        shape = tuple(lead + [1 if d < 0 else d for d in dims])
        if source == "zeros":
            if tensor.datatype == "BYTES":
                arrays[tensor.name] = np.full(shape, b"", dtype=object)
            else:
                arrays[tensor.name] = np.zeros(shape, DATATYPES[tensor.datatype])
        else:
            arrays[tensor.name] = random_array(tensor.datatype, shape, rng)
    return arrays


def _parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, tuple(int(d) for d in dims.split(",") if d.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected NAME=D,D,... (the dimensions after the batch), not {text!r}"
        )


# ----- servers ----------------------------------------------------------------------------------------------


@dataclass
class Target:
    label: str
    url: str  # host:port
    protocol: str = "grpc"  # or "http" (the --url was http://host:port)
    steps: list[Any] = field(default_factory=list)  # traffic.Step, in order
    search: Any = None  # capacity.CapacitySearch with --target
    failure: str = ""


def _address(url: str) -> tuple[str, str]:
    """(protocol, host:port) of a --url: http://host:port is HTTP/REST, grpc://host:port or host:port gRPC."""
    for scheme in ("http", "grpc"):
        if url.startswith(f"{scheme}://"):
            return scheme, url[len(scheme) + 3 :].rstrip("/")
    return "grpc", url


@dataclass(frozen=True)
class _Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]


def _http_model(address: str, model: str, version: str, timeout: float) -> tuple[list[_Tensor], bool | None]:
    """A model's inputs and whether it batches (None: the server has no config endpoint) over HTTP/REST."""
    import urllib.error
    import urllib.request

    base = f"http://{address}/v2/models/{model}" + (f"/versions/{version}" if version else "")
    try:
        with urllib.request.urlopen(base, timeout=timeout) as response:
            metadata = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise RuntimeError(f"HTTP {exc.code}: {exc.read()[:300].decode('utf-8', 'replace')}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise RuntimeError(f"UNAVAILABLE: {exc}") from exc
    inputs = [
        _Tensor(t["name"], t["datatype"], tuple(int(d) for d in t["shape"])) for t in metadata["inputs"]
    ]
    try:
        with urllib.request.urlopen(base + "/config", timeout=timeout) as response:
            return inputs, int(json.loads(response.read()).get("max_batch_size", 0)) > 0
    except (urllib.error.URLError, OSError, ValueError):
        return inputs, None


def http_body(inputs: dict[str, np.ndarray]) -> tuple[bytes, int]:
    """An infer request in the binary tensor extension (JSON header, then each input's raw bytes; outputs
    asked for in binary too) and the JSON's length."""
    from hotwire.clients.tensors import raw_contents

    header: dict[str, Any] = {"inputs": [], "parameters": {"binary_data_output": True}}
    blobs = []
    for name, array in inputs.items():
        datatype, raw = raw_contents(name, array)
        header["inputs"].append(
            {
                "name": name,
                "shape": list(array.shape),
                "datatype": datatype,
                "parameters": {"binary_data_size": len(raw)},
            }
        )
        blobs.append(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    return text + b"".join(blobs), len(text)


def _labels(urls: Sequence[str], labels: Sequence[str]) -> list[str]:
    names = list(labels) + [url for url in urls[len(labels) :]]
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        unique.append(name if seen[name] == 1 else f"{name} ({seen[name]})")
    return unique


@contextlib.contextmanager
def _references(kinds: Sequence[str], onnx_path: Path | None, model: str) -> Iterator[list[Target]]:
    """The reference servers asked for, started on 127.0.0.1 and stopped on the way out."""
    from hotwire.bench.run import ChildServer, reference_argv

    children: list[ChildServer] = []
    try:
        targets = []
        for kind in kinds:
            assert onnx_path is not None
            child = ChildServer(kind, reference_argv(kind, onnx_path, model, 1))
            children.append(child)
            targets.append(Target(f"{kind} (reference)", child.wait_listening()))
        yield targets
    finally:
        for child in children:
            child.stop()


# ----- floors -----------------------------------------------------------------------------------------------


def ort_floor(
    onnx_path: Path, inputs: dict[str, np.ndarray], batch: int, min_runs: int = 200
) -> dict[str, Any]:
    """In-process ONNX Runtime on the same batch (one intra-op thread, no spinning, as the bench's servers):
    `inputs` when they are the model's own (else random ones built from its inputs), p50 and p99 of
    session.run."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    feeds = {name: inputs[name] for name in names if name in inputs}
    if len(feeds) != len(names):  # a preprocessing pipeline stands between the client's inputs and these
        feeds = _session_inputs(session, batch)
    for _ in range(10):
        session.run(None, feeds)
    times: list[float] = []
    start = time.perf_counter()
    while (len(times) < min_runs or time.perf_counter() - start < 1.0) and time.perf_counter() - start < 30:
        t0 = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "batch": batch,
        "runs": len(times),
        "p50_ms": statistics.median(times) * 1e3,
        "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))] * 1e3,
    }


_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(bool)": np.bool_,
}


def _session_inputs(session: Any, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for number, arg in enumerate(session.get_inputs()):
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in arg.shape]
        if shape and not (isinstance(arg.shape[0], int) and arg.shape[0] > 0):
            shape[0] = batch
        dtype = _ORT_TYPES.get(arg.type)
        if dtype is None:
            raise ValueError(f"--onnx: input '{arg.name}' has type {arg.type}, which the floor can't make")
        if np.dtype(dtype).kind == "f":
            feeds[arg.name] = rng.random(shape).astype(dtype)
        elif dtype is np.bool_:
            feeds[arg.name] = np.ones(shape, dtype)
        else:
            feeds[arg.name] = np.ones(shape, dtype) if number else rng.integers(0, 10, shape).astype(dtype)
    return feeds


# ----- the run ----------------------------------------------------------------------------------------------


class _ProgressLine:
    """One line on stderr, rewritten in place on a terminal (a line per update elsewhere, at most 1/s)."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.started = 0.0
        self.prefix = ""

    def begin(self, prefix: str) -> None:
        self.prefix = prefix
        self.started = time.perf_counter()
        self._show(f"{prefix} …")

    def update(self, requests: int, ok: int, p99_ms: float) -> None:
        if not self.tty:  # a log keeps the step's first and last lines only
            return
        elapsed = time.perf_counter() - self.started
        self._show(
            f"{self.prefix} · {elapsed:.0f} s · {requests:,} counted, {ok:,} answered, "
            f"p99 {p99_ms:.2f} ms so far"
        )

    def end(self, text: str) -> None:
        self._show(f"{self.prefix} · {text}", final=True)

    def _show(self, text: str, final: bool = False) -> None:
        if self.tty:
            sys.stderr.write("\r\x1b[2K[bench] " + text + ("\n" if final else ""))
            sys.stderr.flush()
        else:
            log(text)


def _summary(step: Any) -> str:
    p = step.histogram.percentiles_ms()
    offered = f"offered {step.offered_rps:,.0f} rps, " if step.offered_rps else ""
    return (
        f"{offered}achieved {step.achieved_rps:,.0f} rps, p50 {p['p50_ms']:.2f} / p99 {p['p99_ms']:.2f} ms, "
        f"errors {step.errors}, late {step.late_fraction:.1%}, client CPU {step.client_cpu:.2f} cores"
    )


def _measure(spec: Any, clients: int, progress: _ProgressLine, prefix: str) -> Any:
    from hotwire.bench.traffic import run_clients

    progress.begin(prefix)
    step = run_clients(spec, clients, progress.update if clients == 1 else None)
    progress.end(_summary(step))
    return step


def _for(base: Any, target: Target, payloads: dict[str, tuple[Path, int]]) -> Any:
    """`base` (a LoadSpec) aimed at `target`, with its protocol's request."""
    payload, header_length = payloads[target.protocol]
    return replace(
        base,
        url=target.url,
        protocol=target.protocol,
        payload_file=str(payload),
        http_header_length=header_length,
    )


def _run(
    args: argparse.Namespace,
    targets: list[Target],
    payloads: dict[str, tuple[Path, int]],
    progress: _ProgressLine,
) -> None:
    """`payloads`: per protocol, the request file and (HTTP) its JSON header's length."""
    from hotwire.bench.capacity import CapacitySearch, parse_target
    from hotwire.bench.traffic import LoadSpec

    settings = QUICK if args.quick else FULL
    duration = (
        args.duration if args.duration is not None else (None if args.requests else settings["duration_s"])
    )
    warmup = args.warmup if args.warmup is not None else settings["warmup_s"]
    base = LoadSpec(
        url="",
        model=args.model,
        payload_file=str(payloads["grpc"][0]),
        version=args.model_version,
        rate=args.rate or 0.0,
        arrival=args.arrival,
        concurrency=args.concurrency or 1,
        duration_s=duration,
        requests=args.requests,
        warmup_s=warmup,
        timeout_s=args.timeout,
        streaming=args.streaming,
        seed=args.seed,
    )
    if args.target is None:
        for target in targets:
            try:
                target.steps.append(
                    _measure(_for(base, target, payloads), args.clients, progress, target.label)
                )
            except (RuntimeError, OSError) as exc:
                target.failure = str(exc)
        return
    latency_class = parse_target(args.target)
    for target in targets:
        target.search = CapacitySearch(
            latency_class,
            start_rps=args.start_rps,
            max_rps=args.max_rps,
            precision=args.precision if args.precision is not None else float(settings["precision"]),
            max_steps=int(settings["max_steps"]),
        )
    while True:  # a step of each server in turn: drift on the machine spreads over all of them
        active = [(t, t.search.next_rate()) for t in targets if not t.failure]
        active = [(t, rate) for t, rate in active if rate is not None]
        if not active:
            return
        for target, rate in active:
            number = len(target.search.trials) + 1
            min_requests = args.min_requests if args.min_requests is not None else settings["min_samples"]
            window = max(base.duration_s or 0.0, min_requests / rate)
            try:
                step = _measure(
                    replace(_for(base, target, payloads), rate=rate, duration_s=window, requests=None),
                    args.clients,
                    progress,
                    f"{target.label} step {number}",
                )
            except (RuntimeError, OSError) as exc:
                target.failure = str(exc)
                continue
            target.steps.append(step)
            trial = target.search.record(step)
            log(
                f"{target.label} step {number}: {rate:,.0f} rps {'meets' if trial.passed else 'misses'} "
                f"{latency_class.describe()}: {trial.reason}"
            )


# ----- reports ----------------------------------------------------------------------------------------------


def _step_json(step: Any, trial: Any | None) -> dict[str, Any]:
    data = {
        "offered_rps": step.offered_rps,
        "achieved_rps": step.achieved_rps,
        **step.histogram.percentiles_ms(),
        "max_ms": step.histogram.max_ms,
        "mean_ms": step.histogram.mean_ms,
        "requests": step.requests,
        "ok": step.ok,
        "errors": step.errors,
        "error_messages": step.error_messages,
        "late_fraction": step.late_fraction,
        "client_cpu_cores": step.client_cpu,
        "client_loop_busy": step.loop_cpu,
        "client_processes": step.processes,
        "window_s": step.window_s,
        "histogram": step.histogram.encode(),
    }
    if trial is not None:
        data["meets_target"] = trial.passed
        data["reason"] = trial.reason
        data["client_limited"] = trial.client_limited
    return data


def warnings_of(target: Target) -> list[str]:
    """What a reader of the target's numbers must know: the client was the limit, coordinated omission."""
    from hotwire.bench.capacity import client_limit

    found = []
    for number, step in enumerate(target.steps, start=1):
        where = f"step {number}" if len(target.steps) > 1 else "the run"
        limited = client_limit(step)
        if limited:
            found.append(
                f"CLIENT WAS THE LIMIT in {where}: {limited}; its latencies include the client's own "
                "delay (try --clients K, or a quieter machine)"
            )
        p50 = step.histogram.percentile_ms(50.0)
        if step.mode == "closed" and p50 > 0 and step.histogram.max_ms > CO_RATIO * p50:
            found.append(
                f"SUSPECTED COORDINATED OMISSION in {where}: max {step.histogram.max_ms:.1f} ms is over "
                f"{CO_RATIO:g}× the median {p50:.2f} ms; a closed loop stops sending while the server "
                "stalls, so its percentiles hide the stall: measure with --rate (open loop)"
            )
    if target.search is not None and target.search.stopped:
        found.append(f"SEARCH STOPPED: {target.search.stopped}")
    if target.search is not None and target.search.not_monotone:
        missed = ", ".join(f"{t.rate:,.0f} rps ({t.reason})" for t in target.search.not_monotone)
        found.append(
            f"LATENCY NOT MONOTONE IN RATE: the class was missed at {missed}, below the capacity; at low "
            "rates the machine's wake-up latency (client and server idle between requests) can dominate p99"
        )
    return found


def _versions() -> dict[str, str]:
    import grpc

    versions = {"python": platform.python_version(), "grpcio": grpc.__version__, "numpy": np.__version__}
    for package in ("hotwire", "hdrhistogram", "onnxruntime"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def report(
    args: argparse.Namespace, targets: list[Target], inputs: dict[str, np.ndarray], floors: dict[str, Any]
) -> dict[str, Any]:
    from hotwire.bench.run import machine_info

    machine = machine_info()
    servers = []
    for target in targets:
        trials = target.search.trials if target.search is not None else [None] * len(target.steps)
        entry: dict[str, Any] = {
            "label": target.label,
            "url": f"http://{target.url}" if target.protocol == "http" else target.url,
            "steps": [_step_json(step, trial) for step, trial in zip(target.steps, trials)],
            "warnings": warnings_of(target),
        }
        if target.failure:
            entry["failure"] = target.failure
        if target.search is not None:
            entry["target"] = target.search.latency_class.describe()
            entry["verdict"] = target.search.verdict if not target.failure else "fail"
            entry["capacity_rps"] = target.search.capacity_rps
        servers.append(entry)
    settings = {
        key: (str(value) if isinstance(value, Path) else value)
        for key, value in vars(args).items()
        if key not in ("run", "usage_error", "bench_command")
    }
    return {
        "tool": "hotwire bench",
        "command": "hotwire bench " + " ".join(sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]),
        "machine": {key: machine[key] for key in ("cpu", "cores", "date")},
        "versions": _versions(),
        "settings": settings,
        "model": args.model,
        "inputs": [{"name": n, "datatype": str(a.dtype), "shape": list(a.shape)} for n, a in inputs.items()],
        "floors": floors,
        "servers": servers,
    }


def _ratio(a: float | None, b: float | None) -> str:
    if not a or not b:
        return "–"
    return f"{a / b:.2f}×"


def markdown(run: dict[str, Any]) -> str:
    lines = [f"## hotwire bench: model `{run['model']}`", ""]
    machine = run["machine"]
    lines.append(f"- machine: {machine['cpu']}, {machine['cores']} cores; {machine['date']}")
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in run["versions"].items()))
    lines.append(f"- command: `{run['command']}`")
    lines.append("- inputs: " + ", ".join(f"{i['name']} {i['datatype']} {i['shape']}" for i in run["inputs"]))
    settings = run["settings"]
    if settings.get("target"):
        load = f"capacity search for `{settings['target']}`, open loop ({settings['arrival']} arrivals)"
    elif settings.get("rate"):
        load = f"open loop, {settings['rate']:g} rps ({settings['arrival']} arrivals)"
    else:
        load = f"closed loop, concurrency {settings.get('concurrency') or 1}"
    transport = (
        "one ModelStreamInfer stream per client process" if settings.get("streaming") else "unary ModelInfer"
    )
    if any(str(s["url"]).startswith("http://") for s in run["servers"]):
        transport += " (http:// servers: POST .../infer with binary tensors)"
    lines.append(f"- load: {load}; {transport}; {settings['clients']} client process(es)")
    lines.append("")
    floor = run["floors"].get("onnxruntime")
    if floor:
        lines.append(
            f"Floor: in-process ONNX Runtime, batch {floor['batch']}: p50 {floor['p50_ms']:.3f} ms, "
            f"p99 {floor['p99_ms']:.3f} ms ({floor['runs']} runs)."
        )
        lines.append("")
    columns = (
        "server", "step", "offered rps", "achieved rps", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "max ms",
        "errors", "late", "client CPU", "verdict",
    )  # fmt: skip
    lines += [
        "| " + " | ".join(columns) + " |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for server in run["servers"]:
        for number, step in enumerate(server["steps"], start=1):
            offered = f"{step['offered_rps']:,.0f}" if step["offered_rps"] else "closed"
            verdict = ""
            if "meets_target" in step:
                verdict = "meets" if step["meets_target"] else f"misses: {step['reason']}"
            cells = [
                server["label"], str(number), offered, f"{step['achieved_rps']:,.0f}",
                *(f"{step[key]:.2f}" for key in ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")),
                str(step["errors"]), f"{step['late_fraction']:.1%}", f"{step['client_cpu_cores']:.2f}",
                verdict,
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    references = {s["label"]: s for s in run["servers"] if s["label"].endswith("(reference)")}
    for server in run["servers"]:
        if "failure" in server:
            lines.append(f"- **{server['label']}: FAILED**: {server['failure']}")
        if "verdict" in server:
            best = [
                s
                for s in server["steps"]
                if s.get("meets_target") and s["offered_rps"] == server["capacity_rps"]
            ]
            p99 = f", p99 {best[0]['p99_ms']:.2f} ms there" if best else ""
            lines.append(
                f"- **{server['label']}: {server['verdict'].upper()}** for {server['target']}: capacity "
                f"{server['capacity_rps']:,.0f} rps{p99}"
            )
        for warning in server["warnings"]:
            lines.append(f"- ⚠ {server['label']}: {warning}")
    for server in run["servers"]:
        if server["label"] in references or not server["steps"]:
            continue
        ratios = []
        last = server["steps"][-1]
        if floor:
            ratios.append(f"p50 {_ratio(last['p50_ms'], floor['p50_ms'])} in-process ONNX Runtime's")
        for label, reference in references.items():
            if "capacity_rps" in server and "capacity_rps" in reference:
                ratios.append(
                    f"capacity {_ratio(server['capacity_rps'], reference['capacity_rps'])} {label}'s"
                )
            elif reference["steps"]:
                ratios.append(f"p50 {_ratio(last['p50_ms'], reference['steps'][-1]['p50_ms'])} {label}'s")
        if ratios:
            lines.append(f"- {server['label']}: " + "; ".join(ratios))
    return "\n".join(lines) + "\n"


def plots(run: dict[str, Any], stem: Path) -> list[Path]:
    """PNG plots beside the JSON, when matplotlib is installed (the [bench] extra); [] otherwise."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not installed (pip install 'hotwire[bench]'): no plots")
        return []
    from hotwire.bench.histogram import LatencyHistogram

    written = []
    figure, axes = plt.subplots(figsize=(8, 5))
    for server in run["servers"]:
        steps = sorted((s for s in server["steps"] if s["offered_rps"]), key=lambda s: s["offered_rps"])
        if not steps:
            continue
        rates = [s["offered_rps"] for s in steps]
        for key, style in (("p50_ms", ":"), ("p99_ms", "-"), ("p999_ms", "--")):
            axes.plot(
                rates, [s[key] for s in steps], style, marker="o", label=f"{server['label']} {key[:-3]}"
            )
    target = run["settings"].get("target")
    if target:
        from hotwire.bench.capacity import parse_target

        axes.axhline(parse_target(target).p99_ms, color="red", linewidth=1, label=f"{target} class (p99)")
    if axes.lines:
        axes.set_xlabel("offered rate (requests/s)")
        axes.set_ylabel("latency (ms)")
        axes.set_yscale("log")
        axes.set_title(f"{run['model']}: latency against offered rate")
        axes.legend(fontsize="small")
        path = stem.with_name(stem.name + "-latency.png")
        figure.savefig(path, dpi=100, bbox_inches="tight")
        written.append(path)
    plt.close(figure)

    figure, axes = plt.subplots(figsize=(8, 5))
    for server in run["servers"]:
        if not server["steps"]:
            continue
        step = (
            server["steps"][-1]
            if "capacity_rps" not in server
            else max(server["steps"], key=lambda s: (bool(s.get("meets_target")), s["offered_rps"] or 0))
        )
        histogram = LatencyHistogram.decode(step["histogram"])
        percentiles = [50, 75, 90, 95, 99, 99.5, 99.9, 99.99]
        axes.plot(
            [100 / (100 - p) for p in percentiles],
            [histogram.percentile_ms(p) for p in percentiles],
            marker="o",
            label=f"{server['label']} ({step['offered_rps'] or 0:,.0f} rps)",
        )
    if axes.lines:
        axes.set_xscale("log")
        axes.set_xticks([100 / (100 - p) for p in (50, 90, 99, 99.9, 99.99)])
        axes.set_xticklabels(["p50", "p90", "p99", "p99.9", "p99.99"])
        axes.set_ylabel("latency (ms)")
        axes.set_title(f"{run['model']}: latency distribution")
        axes.legend(fontsize="small")
        path = stem.with_name(stem.name + "-distribution.png")
        figure.savefig(path, dpi=100, bbox_inches="tight")
        written.append(path)
    plt.close(figure)
    return written


# ----- the command ------------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url", action="append", default=[], help=f"a V2 gRPC server (repeatable; default {DEFAULT_URL})"
    )
    parser.add_argument("--label", action="append", default=[], help="a name for each --url, in order")
    parser.add_argument("--model", help="the model to benchmark")
    parser.add_argument("--model-version", default="", help="default: the server's choice")
    data = parser.add_mutually_exclusive_group()
    data.add_argument(
        "--input-data", type=Path, metavar="FILE.npz", help="the inputs, one array per input name"
    )
    data.add_argument("--zeros", action="store_true", help="zero inputs (default: random, seeded)")
    parser.add_argument("--batch-size", type=int, default=1, help="rows per request (default %(default)s)")
    parser.add_argument(
        "--shape",
        action="append",
        default=[],
        type=_parse_shape,
        metavar="NAME=D,D",
        help="an input's variable dimensions (after the batch)",
    )
    parser.add_argument(
        "--streaming", action="store_true", help="ModelStreamInfer instead of unary ModelInfer"
    )
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", type=int, help="closed loop: callers back to back (default 1)")
    load.add_argument("--rate", type=float, help="open loop: requests per second")
    parser.add_argument("--arrival", choices=("constant", "poisson"), default="constant")
    length = parser.add_mutually_exclusive_group()
    length.add_argument(
        "--duration", type=float, help="seconds per step after the warm-up (default 10; --quick 1.5)"
    )
    length.add_argument("--requests", type=int, help="requests per step after the warm-up")
    parser.add_argument(
        "--warmup", type=float, help="seconds of load before each step's window (default 2; --quick 0.5)"
    )
    parser.add_argument(
        "--clients", type=int, default=1, help="client processes sharing the load (default 1)"
    )
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per call (default %(default)s)")
    parser.add_argument(
        "--target", help="edge (p99 < 10 ms), streaming (p99 ≤ 50 ms) or p99=MS: search the capacity"
    )
    parser.add_argument(
        "--start-rps", type=float, default=50.0, help="--target: the first rate (default %(default)s)"
    )
    parser.add_argument("--max-rps", type=float, default=50_000.0, help="--target: the highest rate tried")
    parser.add_argument(
        "--min-requests",
        type=int,
        help="--target: a step lasts long enough for this many requests (default 1000; --quick 200)",
    )
    parser.add_argument(
        "--precision",
        type=float,
        help="--target: bisect until the passing and failing rates are so close (default 0.05, --quick 0.25)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="short steps and a coarse search (tests, smoke runs)"
    )
    parser.add_argument(
        "--onnx", type=Path, metavar="MODEL.onnx", help="the model file: in-process ONNX Runtime floor"
    )
    parser.add_argument(
        "--reference",
        action="append",
        default=[],
        choices=("inline", "echo"),
        help="also measure this reference server on the --onnx model (repeatable)",
    )
    parser.add_argument(
        "--output", type=Path, metavar="PATH.json", help="write the run as JSON (and .md, plots)"
    )
    parser.add_argument("--no-plots", action="store_true", help="with --output: no PNG plots")
    parser.add_argument("--seed", type=int, default=0, help="of the random inputs and Poisson arrivals")


def _check(args: argparse.Namespace) -> str:
    """A usage error's message ("" when the arguments make sense)."""
    if not args.model:
        return "--model is required"
    if args.reference and args.onnx is None:
        return "--reference needs --onnx MODEL.onnx (the reference servers serve that file)"
    if args.onnx is not None and not args.onnx.is_file():
        return f"--onnx {args.onnx}: no such file"
    if args.input_data is not None and not args.input_data.is_file():
        return f"--input-data {args.input_data}: no such file"
    for name, value, low in (
        ("--batch-size", args.batch_size, 1),
        ("--clients", args.clients, 1),
        ("--concurrency", args.concurrency, 1),
        ("--requests", args.requests, 1),
        ("--min-requests", args.min_requests, 1),
    ):
        if value is not None and value < low:
            return f"{name} must be at least {low}"
    for name, value in (
        ("--rate", args.rate),
        ("--duration", args.duration),
        ("--timeout", args.timeout),
        ("--start-rps", args.start_rps),
        ("--max-rps", args.max_rps),
        ("--precision", args.precision),
    ):
        if value is not None and value <= 0:
            return f"{name} must be positive"
    if args.warmup is not None and args.warmup < 0:
        return "--warmup must be at least 0"
    if args.target is not None:
        from hotwire.bench.capacity import parse_target

        try:
            parse_target(args.target)
        except ValueError as exc:
            return str(exc)
        if args.rate or args.concurrency:
            return "--target searches the rate itself: leave out --rate and --concurrency"
    if args.requests and args.rate is None and args.target is None and args.clients > 1:
        return "--requests with a closed loop runs in one client process: leave out --clients"
    return ""


def run_bench(args: argparse.Namespace) -> int:
    problem = _check(args)
    if problem:
        args.usage_error(problem)  # exits 2
    try:
        import hotwire.bench.histogram  # noqa: F401  (hdrhistogram: the [bench] extra)
    except ImportError as exc:
        print(
            f"hotwire bench needs the hdrhistogram package: pip install 'hotwire[bench]' ({exc})",
            file=sys.stderr,
        )
        return 1
    from hotwire.clients import Client
    from hotwire.clients.errors import InferenceServerError, ServerError
    from hotwire.clients.tensors import RequestEncoder

    urls = args.url or [DEFAULT_URL]
    targets = []
    for label, url in zip(_labels(urls, args.label), urls):
        protocol, address = _address(url)
        targets.append(Target(label, address, protocol))
    if args.streaming and any(t.protocol == "http" for t in targets):
        args.usage_error("--streaming is gRPC's ModelStreamInfer: not with an http:// --url")
    first = targets[0]
    model_inputs: Sequence[Any]
    batching: bool | None = None
    try:
        if first.protocol == "http":
            model_inputs, batching = _http_model(first.url, args.model, args.model_version, args.timeout)
        else:
            with Client(first.url, multiplex=False, timeout=args.timeout) as client:
                model_inputs = client.model_metadata(args.model, args.model_version).inputs
                try:
                    batching = client.model_config(args.model, args.model_version).max_batch_size > 0
                except ServerError:  # no ModelConfig (KServe V2 has none)
                    pass
    except (InferenceServerError, RuntimeError) as exc:
        print(f"hotwire bench: {urls[0]}: {exc}", file=sys.stderr)
        return 1
    # without a config, a leading -1 in every input is the batch
    batched = (
        batching
        if batching is not None
        else bool(model_inputs) and all(t.shape[:1] == (-1,) for t in model_inputs)
    )
    data = dict(np.load(args.input_data, allow_pickle=False)) if args.input_data is not None else None
    try:
        inputs = build_inputs(
            model_inputs,
            batched,
            args.batch_size,
            dict(args.shape),
            "data" if data is not None else "zeros" if args.zeros else "random",
            args.seed,
            data,
        )
    except ValueError as exc:
        args.usage_error(str(exc))
    floors: dict[str, Any] = {}
    if args.onnx is not None:
        floors["onnxruntime"] = ort_floor(args.onnx, inputs, args.batch_size)
        log(f"in-process ONNX Runtime: p50 {floors['onnxruntime']['p50_ms']:.3f} ms")
    progress = _ProgressLine()
    with tempfile.TemporaryDirectory(prefix="hotwire-bench-") as folder:
        payload = Path(folder) / "request.bin"
        payload.write_bytes(RequestEncoder().encode(args.model, inputs, version=args.model_version))
        body, header_length = http_body(inputs)
        (Path(folder) / "request.http").write_bytes(body)
        payloads = {"grpc": (payload, 0), "http": (Path(folder) / "request.http", header_length)}
        try:
            with _references(args.reference, args.onnx, args.model) as references:
                everyone = targets + references
                _run(args, everyone, payloads, progress)
        except RuntimeError as exc:  # a reference server that did not start
            print(f"hotwire bench: {exc}", file=sys.stderr)
            return 1
    run = report(args, everyone, inputs, floors)
    summary = markdown(run)
    print(summary)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(run, indent=1) + "\n")
        args.output.with_suffix(".md").write_text(summary)
        written = [args.output, args.output.with_suffix(".md")]
        if not args.no_plots:
            written += plots(run, args.output.with_suffix(""))
        log("wrote " + ", ".join(str(p) for p in written))
    if any(t.failure for t in everyone):
        return 1
    if args.target is not None and any(s.get("verdict") == "fail" for s in run["servers"]):
        return EXIT_TARGET_MISSED
    return 0


def _zoo(args: argparse.Namespace) -> int:
    from hotwire.bench import zoo

    return zoo.main(["--out", str(args.out), *sum((["--model", m] for m in args.zoo_model), [])])


def add_bench_command(commands: Any) -> None:
    """`hotwire bench` (and `hotwire bench zoo`) in `hotwire`'s subparsers."""
    bench = commands.add_parser(
        "bench", help="latency-class benchmarks against any V2 server (and the model zoo)"
    )
    configure(bench)
    bench.set_defaults(run=run_bench, usage_error=bench.error)
    sub = bench.add_subparsers(dest="bench_command", metavar="zoo")
    zoo = sub.add_parser("zoo", help="write the benchmark models as a Triton-layout repository")
    zoo.add_argument("--out", type=Path, required=True, help="the repository to write")
    zoo.add_argument("--model", dest="zoo_model", action="append", default=[], help="only these models")
    zoo.set_defaults(run=_zoo, usage_error=zoo.error)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hotwire bench", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    add_bench_command(commands)
    args = parser.parse_args(["bench", *(sys.argv[1:] if argv is None else argv)])
    return int(args.run(args))


if __name__ == "__main__":
    raise SystemExit(main())
