"""The GPU check: one short script for a machine with a CUDA GPU, its numbers written as a RESULTS.md section.

    python -m hotwire.bench.gpu_check [--provider auto|cuda|cpu] [--batches 1,2,4,8,16,32,64] [--seconds 0.5]
                                [--gpu-tests] [--output bench/RESULTS.md]

GPU time is scarce, so every part is short and each says whether it ran, and if not why:

1. device: what NVML sees (name, memory, MIG mode).
2. convnet at each batch size on the provider: median ms per batch and images/s (ORT, in process).
3. CUDA graphs on and off at each batch size, interleaved: hotwire's GraphedBatches (one captured graph per
   bucket, IO binding) against session.run with host arrays.
4. time-slicing: two sessions on one device, each driven by its own thread, against one session alone: the
   throughput gained and what each run's latency pays for it.
5. GPU preprocessing vs CPU: numba.cuda's normalize_hwc_to_nchw against hotwire.kernels.image's, 224x224
   uint8.
6. the launcher and NVML: `hotwire serve --devices 0` and the supervisor's per-worker and per-GPU (per-MIG)
   metrics.
7. with --gpu-tests, the GPU tests (`pytest -m gpu tests`), run from a checkout.

`--provider auto` takes CUDA when this onnxruntime has it, and skips parts 2-4 when it has not (a CPU-only
onnxruntime with numba-cuda still runs 1, 5, 6 and 7). `--provider cpu` runs parts 2-4 on the CPU provider
with CPU tensors: the same code, which is how it is tested without a GPU.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hotwire.bench import models
from hotwire.bench.run import HOST, ChildServer, machine_info, markers, replace_section
from hotwire.server.config import bundled_repository

DEFAULT_BATCHES = (1, 2, 4, 8, 16, 32, 64)
SECTION = "gpu"


@dataclass
class Report:
    """What ran, what did not and why, and the tables; rendered as one Markdown section."""

    lines: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def part(self, title: str, rows: list[str]) -> None:
        self.lines += ["", f"### {title}", "", *rows]

    def skip(self, title: str, why: str) -> None:
        self.skipped.append(f"{title}: {why}")


def timed_ms(run: Callable[[], Any], seconds: float, minimum: int = 5) -> float:
    """The median wall time of `run` in ms, called for at least `seconds` and `minimum` times."""
    run()  # the first call pays allocations (and, under CUDA graphs, the capture)
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < minimum or time.perf_counter() < deadline:
        started = time.perf_counter()
        run()
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def session(provider: str, graphs: bool = False) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if provider == "cpu":
        return ort.InferenceSession(
            models.serialize_model(models.convnet()), options, providers=["CPUExecutionProvider"]
        )
    cuda = {"device_id": "0", **({"enable_cuda_graph": "1"} if graphs else {})}
    created = ort.InferenceSession(
        models.serialize_model(models.convnet()),
        options,
        providers=["CUDAExecutionProvider"],
        provider_options=[cuda],
    )
    if "CUDAExecutionProvider" not in created.get_providers():
        raise RuntimeError(f"onnxruntime ran the convnet on {created.get_providers()}, not CUDA")
    return created


def images(rows: int) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(rows).standard_normal((rows, 3, 224, 224), dtype=np.float32)}


def batch_sweep(report: Report, provider: str, batches: Sequence[int], seconds: float) -> None:
    plain = session(provider)
    rows = ["| batch | median ms per batch | images/s |", "| ---: | ---: | ---: |"]
    for batch in batches:
        feeds = images(batch)
        ms = timed_ms(lambda: plain.run(["logits"], feeds), seconds)
        rows.append(f"| {batch} | {ms:.3f} | {batch / ms * 1e3:.0f} |")
    report.part(f"convnet (3x224x224 FP32) on {provider}, session.run with host arrays", rows)


def graphs_on_off(report: Report, provider: str, batches: Sequence[int], seconds: float) -> None:
    from hotwire.server.cuda_graphs import GraphedBatches, GraphPlan, graph_plan
    from hotwire.server.datatypes import BY_NAME
    from hotwire.server.model_config import GpuOptions, Signature, TensorSpec

    fp32 = BY_NAME["FP32"]
    signature = Signature(
        (TensorSpec("input", fp32, (3, 224, 224), (3, 224, 224)),),
        (TensorSpec("logits", fp32, (1000,), (1000,)),),
        max_batch_size=max(batches),
    )
    import hotwire.proto.model_config_pb2 as mc

    planned = graph_plan(signature, mc.ModelConfig(max_batch_size=max(batches)), GpuOptions(cuda_graphs=True))
    plan = GraphPlan(tuple(sorted(set(batches))), planned.inputs, planned.outputs)
    plain = session(provider)
    graphed = GraphedBatches(session(provider, graphs=True), "cpu" if provider == "cpu" else "cuda", 0, plan)
    rows = [
        "| batch | graphs off, ms | graphs on, ms | on / off | max abs diff |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for batch in batches:
        feeds = images(batch)
        difference = float(
            np.max(np.abs(graphed.run(feeds, ["logits"])[0] - plain.run(["logits"], feeds)[0]))
        )
        off, on = [], []
        for _ in range(3):  # interleaved: drift on a shared machine spreads over both
            off.append(timed_ms(lambda: plain.run(["logits"], feeds), seconds / 3))
            on.append(timed_ms(lambda: graphed.run(feeds, ["logits"]), seconds / 3))
        off_ms, on_ms = statistics.median(off), statistics.median(on)
        rows.append(f"| {batch} | {off_ms:.3f} | {on_ms:.3f} | {on_ms / off_ms:.2f} | {difference:.2e} |")
    where = "CUDA graphs replayed" if provider != "cpu" else "CPU tensors: no graph is captured on the CPU"
    report.part(f"CUDA graphs on/off, convnet on {provider} ({where}; both include the host copies)", rows)


def time_slicing(report: Report, provider: str, batch: int, seconds: float) -> None:
    feeds = images(batch)

    def drive(runner: Any, latencies: list[float], stop: float) -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            runner.run(["logits"], feeds)
            latencies.append((time.perf_counter() - started) * 1e3)

    results = []
    for count in (1, 2):
        sessions = [session(provider) for _ in range(count)]
        for s in sessions:
            s.run(["logits"], feeds)
        latencies: list[list[float]] = [[] for _ in sessions]
        stop = time.perf_counter() + seconds
        threads = [threading.Thread(target=drive, args=(s, lat, stop)) for s, lat in zip(sessions, latencies)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        runs = sum(len(lat) for lat in latencies)
        median = statistics.median(t for lat in latencies for t in lat)
        results.append((count, runs * batch / seconds, median))
    base = results[0][1]
    rows = ["| instances | images/s | vs one | median ms per run |", "| ---: | ---: | ---: | ---: |"]
    rows += [f"| {n} | {rate:.0f} | {rate / base:.2f} | {ms:.3f} |" for n, rate, ms in results]
    report.part(f"time-slicing: sessions on one {provider} device, one thread each, batch {batch}", rows)


def preprocessing(report: Report, seconds: float) -> None:
    from hotwire.kernels import cuda_image, image

    if not cuda_image.available():
        report.skip("GPU preprocessing", "numba.cuda cannot use a GPU here")
        return
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    rows = [
        "| batch | CPU numba, ms | GPU numba.cuda (host in, device out), ms | GPU to host, ms "
        "| max abs diff |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    from numba import cuda

    for batch in (1, 32):
        pictures = np.random.default_rng(batch).integers(0, 256, (batch, 224, 224, 3), dtype=np.uint8)
        cpu = image.normalize_hwc_to_nchw(pictures, mean, std)
        gpu = cuda_image.normalize_hwc_to_nchw(pictures, mean, std, to_host=True)
        difference = float(np.max(np.abs(np.asarray(gpu) - cpu)))

        def on_device() -> None:
            cuda_image.normalize_hwc_to_nchw(pictures, mean, std)
            cuda.synchronize()

        cpu_ms = timed_ms(lambda: image.normalize_hwc_to_nchw(pictures, mean, std), seconds)
        gpu_ms = timed_ms(on_device, seconds)
        host_ms = timed_ms(
            lambda: cuda_image.normalize_hwc_to_nchw(pictures, mean, std, to_host=True), seconds
        )
        rows.append(f"| {batch} | {cpu_ms:.3f} | {gpu_ms:.3f} | {host_ms:.3f} | {difference:.2e} |")
    report.part("preprocessing 224x224 uint8 HWC -> normalized FP32 NCHW", rows)


def device(report: Report) -> None:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        report.skip("device", "nvidia-ml-py is not installed")
        return
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        report.skip("device", f"NVML does not start: {exc}")
        return
    rows = ["| index | name | memory GiB | MIG mode |", "| ---: | --- | ---: | --- |"]
    for index in range(pynvml.nvmlDeviceGetCount()):
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        try:
            mig = "on" if pynvml.nvmlDeviceGetMigMode(handle)[0] else "off"
        except pynvml.NVMLError:
            mig = "not supported"
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30
        rows.append(f"| {index} | {pynvml.nvmlDeviceGetName(handle)} | {memory:.0f} | {mig} |")
    pynvml.nvmlShutdown()
    report.part("device (NVML)", rows)


SUPERVISOR_METRICS = re.compile(r"^(hotwire_worker_info|nv_gpu_memory_\w+|hotwire_mig_memory_\w+)\{.*$", re.M)


def launcher(report: Report) -> None:
    with tempfile.TemporaryDirectory(prefix="hotwire-gpu-check-") as scratch:
        repository = Path(scratch) / "models"
        shutil.copytree(bundled_repository() / "classifier", repository / "classifier")
        argv = [sys.executable, "-m", "hotwire.server", "serve", "--model-repository", str(repository)]
        argv += f"--devices 0 --host {HOST} --grpc-port 0 --http-port -1 --metrics-port 0".split()
        server = ChildServer("hotwire", argv)
        try:
            server.wait_listening()
            if server.metrics_port is None:
                raise RuntimeError("the supervisor printed no metrics port:\n" + "".join(server.lines[-20:]))
            deadline = time.monotonic() + 60
            found: list[str] = []
            while time.monotonic() < deadline and not any("worker_info" in f for f in found):
                url = f"http://{HOST}:{server.metrics_port}/metrics"
                text = urllib.request.urlopen(url, timeout=10).read().decode()
                found = [match.group(0) for match in SUPERVISOR_METRICS.finditer(text)]
                time.sleep(0.2)
        finally:
            server.stop()
    report.part("launcher: `hotwire serve --devices 0`, the supervisor's metrics", ["```", *found, "```"])


def gpu_tests(report: Report) -> None:
    tests = Path.cwd() / "tests"
    if not tests.is_dir():
        report.skip("GPU tests", f"no tests/ under {Path.cwd()}: run from a checkout")
        return
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-rs", str(tests)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    tail = result.stdout.strip().splitlines()[-12:]
    report.part(f"GPU tests: `pytest -m gpu tests` exited {result.returncode}", ["```", *tail, "```"])


def cuda_in_onnxruntime() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hotwire.bench.gpu_check")
    parser.add_argument("--provider", choices=("auto", "cuda", "cpu"), default="auto")
    parser.add_argument(
        "--batches",
        default=",".join(map(str, DEFAULT_BATCHES)),
        type=lambda t: [int(v) for v in t.split(",")],
    )
    parser.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    parser.add_argument("--gpu-tests", action="store_true", help="also run `pytest -m gpu tests`")
    parser.add_argument("--output", type=Path, default=Path("bench/RESULTS.md"))
    args = parser.parse_args(argv)
    command = "python -m hotwire.bench.gpu_check " + shlex.join(argv if argv is not None else sys.argv[1:])
    provider = args.provider
    if provider == "auto":
        provider = "cuda" if cuda_in_onnxruntime() else "none"
    if provider == "cuda" and not cuda_in_onnxruntime():
        print("--provider cuda: this onnxruntime has no CUDAExecutionProvider", file=sys.stderr)
        return 2
    report = Report()
    device(report)
    if provider == "none":
        for title in ("convnet batch sweep", "CUDA graphs on/off", "time-slicing"):
            report.skip(
                title, "this onnxruntime has no CUDAExecutionProvider (onnxruntime-gpu is not installed)"
            )
    else:
        batch_sweep(report, provider, args.batches, args.seconds)
        graphs_on_off(report, provider, args.batches, args.seconds)
        time_slicing(report, provider, min(8, max(args.batches)), max(1.0, args.seconds * 2))
    preprocessing(report, args.seconds)
    launcher(report)
    if args.gpu_tests:
        gpu_tests(report)
    else:
        report.skip("GPU tests", "not asked for (--gpu-tests)")
    info = machine_info()
    start, end = markers(SECTION)
    section = [
        start,
        "## GPU check",
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores; {info['date']}; onnxruntime {info['onnxruntime']}",
        f"- command: `{command}`; provider for the ORT parts: {provider}",
        *report.lines,
        "",
        "Not run:" if report.skipped else "Every part ran.",
        *([""] + [f"- {s}" for s in report.skipped] if report.skipped else []),
        end,
    ]
    replace_section(args.output, "\n".join(section) + "\n", SECTION)
    print("\n".join(section))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
