"""The zoo × latency-class table of bench/RESULTS.md: `hotwire bench --target` for every zoo model and class,
against hotwire and the inline reference server (and MLServer, given its venv), in one run.

    python -m hotwire.bench.classes [--models classifier,wide_mlp,...] [--classes edge,streaming]
                                    [--mlserver-venv DIR] [--client-cpu 0] [--server-cpu 1]
                                    [--duration 3] [--warmup 1] [--precision 0.1] [--output bench/RESULTS.md]

The zoo (hotwire.bench.zoo) is written to a temporary repository and served by one `hotwire serve` (gRPC only)
pinned to `--server-cpu`. For each model the inline reference server (one ORT session called in the handler;
hotwire.bench.reference_servers) serves the same ONNX file on the same core, for the models clients call with
the ONNX model's own inputs (the inline server has no preprocessing pipeline: not convnet_uint8 or
transformer); it runs only while its model is measured. Each (model, class) is one `hotwire bench` process
pinned to `--client-cpu`, its servers' steps interleaved, with the in-process ONNX Runtime floor. The inputs:
one row (the convnets' 224×224 images; the transformer's 64 random token ids, which its pipeline pads to 128).

Prints a Markdown section; `--output` replaces the file's `classes` section (bench/run.py's markers).
The defaults fit in about 20 minutes on a 2-core machine. Every child has a timeout and is stopped on the way
out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "render_section"]

SECTION = "classes"
CLASSES = ("edge", "streaming")
NO_INLINE = frozenset({"convnet_uint8", "transformer"})  # their clients' inputs go through a pipeline first
SEARCH_TIMEOUT_S = 900.0
MLSERVER_START_TIMEOUT_S = 120.0
_V2_TYPES = {
    "tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16", "tensor(int64)": "INT64",
    "tensor(int32)": "INT32", "tensor(uint8)": "UINT8", "tensor(bool)": "BOOL",
}  # fmt: skip


def log(message: str) -> None:
    print(f"[bench.classes] {message}", file=sys.stderr, flush=True)


def _input_data(model: str, folder: Path) -> list[str]:
    """`hotwire bench` arguments for the model's inputs."""
    if model == "transformer":
        path = folder / "transformer-ids.npz"
        np.savez(path, tokens=np.random.default_rng(0).integers(1, 1000, (1, 64), dtype=np.int64))
        return ["--input-data", str(path)]
    if model == "convnet_uint8":
        return ["--shape", "image=224,224,3"]
    return []


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _mlserver(venv: Path, model: str, onnx_path: Path, folder: Path, cpu: int | None) -> tuple[Any, str]:
    """MLServer (from `venv`) serving `onnx_path` through the bench's ONNX Runtime model
    (hotwire.bench.mlserver_runtime), gRPC on a free port of 127.0.0.1, REST beside it, metrics off; its
    other settings are MLServer's defaults (parallel_workers 1: inference in a worker process)."""
    import onnxruntime as ort

    from hotwire.bench.client import pin_prefix
    from hotwire.bench.run import ChildServer
    from hotwire.clients import Client, InferenceServerError

    root = folder / f"mlserver-{model}"
    (root / model).mkdir(parents=True)
    shutil.copyfile(onnx_path, root / model / "model.onnx")
    # a file for MLServer's venv, not a module of this one (it imports mlserver)
    shutil.copyfile(Path(__file__).with_name("mlserver_runtime.py"), root / model / "mlserver_runtime.py")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def tensors(args: Any) -> list[dict[str, Any]]:
        return [
            {
                "name": a.name,
                "datatype": _V2_TYPES[a.type],
                "shape": [d if isinstance(d, int) else -1 for d in a.shape],
            }
            for a in args
        ]

    settings = {
        "name": model,
        "implementation": "mlserver_runtime.OnnxModel",
        "parameters": {"uri": "./model.onnx", "version": "1"},
        "inputs": tensors(session.get_inputs()),
        "outputs": tensors(session.get_outputs()),
    }
    (root / model / "model-settings.json").write_text(json.dumps(settings, indent=1))
    grpc_port, http_port = _free_port(), _free_port()
    server_settings = {
        "host": "127.0.0.1",
        "grpc_port": grpc_port,
        "http_port": http_port,
        "metrics_endpoint": None,
    }
    (root / "settings.json").write_text(json.dumps(server_settings))
    child = ChildServer("mlserver", pin_prefix(cpu) + [str(venv / "bin" / "mlserver"), "start", str(root)])
    url = f"127.0.0.1:{grpc_port}"
    deadline = time.monotonic() + MLSERVER_START_TIMEOUT_S
    with Client(url, multiplex=False, timeout=2.0, retries=0) as client:
        while True:
            try:
                if client.model_ready(model):
                    return child, url
            except InferenceServerError:
                pass
            if time.monotonic() > deadline or child.proc.poll() is not None:
                child.stop()
                raise RuntimeError("MLServer did not start: " + "".join(child.lines[-20:]))
            time.sleep(0.5)


def _search(
    model: str,
    latency_class: str,
    urls: list[tuple[str, str]],
    onnx_path: Path,
    extra: list[str],
    args: argparse.Namespace,
    output: Path,
) -> dict[str, Any]:
    from hotwire.bench.client import pin_prefix

    argv = [*pin_prefix(args.client_cpu), sys.executable, "-m", "hotwire.server", "bench"]
    for label, url in urls:
        argv += ["--url", url, "--label", label]
    argv += [
        "--model", model, "--target", latency_class, "--duration", str(args.duration), "--warmup",
        str(args.warmup), "--precision", str(args.precision), "--min-requests", str(args.min_requests),
        "--onnx", str(onnx_path),
        "--output", str(output),
        "--no-plots", *extra,
    ]  # fmt: skip
    log(" ".join(argv[argv.index("bench") :]))
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, timeout=SEARCH_TIMEOUT_S, check=False)
    if done.returncode not in (0, 3):  # 3: a verdict was fail, which is a result
        raise RuntimeError(f"hotwire bench for {model} / {latency_class} exited {done.returncode}")
    run: dict[str, Any] = json.loads(output.read_text())
    return run


def render_section(runs: list[dict[str, Any]], command: str, args: argparse.Namespace) -> str:
    from hotwire.bench.run import markers

    start, end = markers(SECTION)
    first = runs[0] if runs else {"machine": {"cpu": "?", "cores": "?", "date": "?"}, "versions": {}}
    machine = first["machine"]
    lines = [
        start,
        "## Latency classes: capacity of the zoo per class (`hotwire bench --target`)",
        "",
        f"- machine: {machine['cpu']}, {machine['cores']} cores; {machine['date']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in first["versions"].items()),
        f"- command: `{command}`",
        f"- servers pinned to CPU {args.server_cpu}, each `hotwire bench` to CPU {args.client_cpu} "
        "(taskset); "
        "hotwire: one `hotwire serve` of the zoo (`hotwire bench zoo`), gRPC only; inline: "
        "hotwire.bench.reference_servers on the same ONNX file (not for the models with a pipeline)",
        "- search: open loop, constant arrivals, from 50 rps doubling, then bisection to "
        f"{args.precision:.0%}; "
        f"steps of max({args.duration:g} s, {args.min_requests} requests) after {args.warmup:g} s of "
        "warm-up; a step meets "
        "the class when its p99 does, errors < 0.1 % and ≥ 90 % of the offered rate is answered",
        "- capacity: the highest rate measured to meet the class (0: not even 50 rps); in brackets the p99 "
        "there; floor: in-process ONNX Runtime p50 on the same batch (1 intra-op thread)",
        "",
        "| model | class | hotwire capacity rps | inline capacity rps | MLServer capacity rps "
        "| echo (floor) capacity rps | hotwire / inline | hotwire / MLServer | ORT floor p50 ms "
        "| client was the limit |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for run in runs:
        servers = {server["label"]: server for server in run["servers"]}
        cells = []
        for label in ("hotwire", "inline", "mlserver", "echo"):
            server = servers.get(label)
            if server is None:
                cells.append("–")
                continue
            capacity = server["capacity_rps"]
            at = [s for s in server["steps"] if s.get("meets_target") and s["offered_rps"] == capacity]
            p99 = f" ({at[0]['p99_ms']:.1f} ms)" if at else ""
            cells.append(f"{server['capacity_rps']:,.0f}{p99}")
        hotwire = servers.get("hotwire")
        ratios = []
        for label in ("inline", "mlserver"):
            peer = servers.get(label)
            if hotwire is not None and peer is not None and peer["capacity_rps"]:
                ratios.append(f"{hotwire['capacity_rps'] / peer['capacity_rps']:.2f}×")
            else:
                ratios.append("–")
        limited = [
            f"{label} at {step['offered_rps']:,.0f} rps"
            for label, server in servers.items()
            for step in server["steps"]
            if step.get("client_limited")
        ]
        floor = run["floors"].get("onnxruntime", {}).get("p50_ms")
        row = [run["model"], run["settings"]["target"], *cells, *ratios]
        row += [f"{floor:.3f}" if floor is not None else "–", "; ".join(limited) or "no"]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", end]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    from hotwire.bench.zoo import ZOO

    parser = argparse.ArgumentParser(
        prog="python -m hotwire.bench.classes", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--models", default=",".join(ZOO), help="comma-separated zoo models (default: all)")
    parser.add_argument("--classes", default=",".join(CLASSES), help="comma-separated (default %(default)s)")
    parser.add_argument("--client-cpu", type=int, default=0)
    parser.add_argument("--server-cpu", type=int, default=1)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per step (at least)")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--precision", type=float, default=0.1)
    parser.add_argument("--min-requests", type=int, default=500, help="per step, at least")
    parser.add_argument(
        "--mlserver-venv", type=Path, help="a venv with mlserver and onnxruntime: MLServer joins the table"
    )
    parser.add_argument("--output", type=Path, help="replace this file's classes section")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from hotwire.bench.client import pin_prefix
    from hotwire.bench.run import ChildServer, hotwire_argv, reference_argv, replace_section
    from hotwire.bench.zoo import ZOO, write_zoo
    from hotwire.clients import Client

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    classes = [c for c in args.classes.split(",") if c]
    unknown = [m for m in models if m not in ZOO]
    if unknown:
        print(f"classes: unknown models {unknown} (the zoo has {sorted(ZOO)})", file=sys.stderr)
        return 2
    command = "python -m hotwire.bench.classes" + (" " + " ".join(argv) if argv else "")
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hotwire-classes-") as folder:
        root = Path(folder)
        repository = root / "zoo"
        write_zoo(repository, models)
        server = ChildServer(
            "hotwire",
            pin_prefix(args.server_cpu)
            + hotwire_argv(repository, ["--http-port", "-1", "--metrics-port", "-1"]),
        )
        try:
            url = server.wait_listening()
            with Client(url, multiplex=False) as client:
                for model in models:
                    if not client.model_ready(model):
                        raise RuntimeError(f"model {model} is not ready on hotwire")
            for model in models:
                onnx_path = repository / model / "1" / "model.onnx"
                extra = _input_data(model, root)
                peers: list[Any] = []
                try:
                    urls = [("hotwire", url)]
                    if model not in NO_INLINE:
                        reference = reference_argv("inline", onnx_path, model, 1)
                        peers.append(ChildServer("inline", pin_prefix(args.server_cpu) + reference))
                        urls.append(("inline", peers[-1].wait_listening()))
                        echo = reference_argv("echo", onnx_path, model, 1)
                        peers.append(ChildServer("echo", pin_prefix(args.server_cpu) + echo))
                        urls.append(("echo", peers[-1].wait_listening()))
                        if args.mlserver_venv is not None:
                            child, mlserver_url = _mlserver(
                                args.mlserver_venv, model, onnx_path, root, args.server_cpu
                            )
                            peers.append(child)
                            urls.append(("mlserver", mlserver_url))
                    for latency_class in classes:
                        output = root / f"{model}-{latency_class}.json"
                        runs.append(_search(model, latency_class, urls, onnx_path, extra, args, output))
                finally:
                    for peer in peers:
                        peer.stop()
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            log(str(exc))
            return 1
        finally:
            server.stop()
    section = render_section(runs, command, args)
    print(section)
    if args.output is not None:
        replace_section(args.output, section, SECTION)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
