"""Run Triton's perf_analyzer (shipped in the tritonclient[grpc]==2.41.0 wheel) against a server.

perf_analyzer needs Debian's libb64-0d and libcudart.so.12 even for CPU-only use; the latter comes from the
nvidia-cuda-runtime-cu12 wheel and is put on LD_LIBRARY_PATH here. `locate()` says why when it can't run.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PerfAnalyzer:
    path: str
    env: dict[str, str]


@dataclass(frozen=True)
class Measurement:
    concurrency: int
    throughput: float  # inferences per second
    p50_us: float
    p90_us: float
    p99_us: float


def _cudart_dir() -> str | None:
    try:
        import nvidia.cuda_runtime  # type: ignore[import-not-found]
    except ImportError:
        return None
    for root in nvidia.cuda_runtime.__path__:
        if (Path(root) / "lib" / "libcudart.so.12").exists():
            return str(Path(root) / "lib")
    return None


def locate() -> tuple[PerfAnalyzer | None, str]:
    """(perf_analyzer ready to run, "") or (None, why it can't run here)."""
    path = shutil.which("perf_analyzer") or str(Path(sys.executable).parent / "perf_analyzer")
    if not Path(path).exists():
        return None, "perf_analyzer not found (pip install 'tritonclient[grpc]==2.41.0')"
    env = dict(os.environ)
    cudart = _cudart_dir()
    if cudart:
        env["LD_LIBRARY_PATH"] = cudart + os.pathsep + env.get("LD_LIBRARY_PATH", "")
    try:
        probe = subprocess.run([path, "--version"], capture_output=True, text=True, env=env, timeout=30)
    except OSError as exc:
        return None, f"perf_analyzer cannot start: {exc}"
    if "error while loading shared libraries" in probe.stderr:
        return None, f"perf_analyzer lacks a library: {probe.stderr.strip()} (apt-get install libb64-0d; pip install nvidia-cuda-runtime-cu12)"
    return PerfAnalyzer(path, env), ""


def measure(tool: PerfAnalyzer, model: str, url: str, concurrency: list[int], window_ms: int = 2000,
            extra: list[str] | None = None, timeout_s: float = 600) -> list[Measurement]:
    """One perf_analyzer run over the given concurrency levels; raises with its output when it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.csv"
        args = [tool.path, "-m", model, "-i", "grpc", "-u", url, "-p", str(window_ms), "-f", str(report),
                "--percentile", "50"]
        args += ["--concurrency-range", f"{concurrency[0]}:{concurrency[-1]}:{_step(concurrency)}"]
        args += extra or []
        result = subprocess.run(args, capture_output=True, text=True, env=tool.env, timeout=timeout_s)
        if result.returncode != 0:
            raise RuntimeError(f"perf_analyzer failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        rows = list(csv.DictReader(io.StringIO(report.read_text())))
        measured = [Measurement(int(r["Concurrency"]), float(r["Inferences/Second"]), float(r["p50 latency"]),
                                float(r["p90 latency"]), float(r["p99 latency"])) for r in rows]
        missing = sorted(set(range(concurrency[0], concurrency[-1] + 1, _step(concurrency)))
                         - {m.concurrency for m in measured})
        if missing:
            # Over a range, perf_analyzer stops at the first level it can't stabilise and still exits 0.
            raise RuntimeError(f"perf_analyzer reported no stable measurement for concurrency {missing}:\n"
                               f"{result.stdout}\n{result.stderr}")
    return sorted(measured, key=lambda m: m.concurrency)  # perf_analyzer's CSV is not in concurrency order


def _step(levels: list[int]) -> int:
    steps = {b - a for a, b in zip(levels, levels[1:])}
    if len(steps) > 1:
        raise ValueError(f"perf_analyzer takes evenly spaced concurrency levels, got {levels}")
    return steps.pop() if steps else 1
