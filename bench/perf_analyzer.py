"""Run Triton's perf_analyzer (shipped in the tritonclient[grpc]==2.41.0 wheel) against a server.

2.41.0 is the last tritonclient wheel that ships perf_analyzer (the `perf-analyzer` package's wheels need a
newer glibc than Debian 12's), and it must not pin the tritonclient of hotwire's own environment, so it lives
apart: in its own directory, `home()` (`$HOTWIRE_PERF_ANALYZER_HOME`, else `~/.cache/hotwire/perf-analyzer`),
filled by `python -m hotwire.bench.perf_analyzer install` with pip's --target (the binary and the
libcudart.so.12 of the nvidia-cuda-runtime-cu12 wheel; none of their Python code is imported). perf_analyzer
also needs Debian's libb64-0d even for CPU-only use. `locate()` finds it (on PATH, beside this Python, or in
`home()`), puts libcudart on LD_LIBRARY_PATH, and says why when it can't run.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# What `install` puts in home(): perf_analyzer (in the tritonclient wheel's scripts) and libcudart.so.12.
PACKAGES = ("tritonclient[grpc]==2.41.0", "nvidia-cuda-runtime-cu12")


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


def home() -> Path:
    """perf_analyzer's own directory (see the module docstring)."""
    configured = os.environ.get("HOTWIRE_PERF_ANALYZER_HOME")
    if configured:
        return Path(configured).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hotwire" / "perf-analyzer"


def install(target: Path) -> None:
    """pip-install perf_analyzer and libcudart into `target` (no dependencies: only the binary is used)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--upgrade",
            "--no-deps",
            "--target",
            str(target),
            *PACKAGES,
        ],
        check=True,
    )


def _cudart_dir() -> str | None:
    roots = [Path(home()) / "nvidia" / "cuda_runtime"]
    try:
        import nvidia.cuda_runtime  # type: ignore[import-not-found]
    except ImportError:
        pass
    else:
        roots += [Path(root) for root in nvidia.cuda_runtime.__path__]
    for root in roots:
        if (root / "lib" / "libcudart.so.12").exists():
            return str(root / "lib")
    return None


def _find() -> str | None:
    candidates = [
        shutil.which("perf_analyzer"),
        str(Path(sys.executable).parent / "perf_analyzer"),
        str(home() / "bin" / "perf_analyzer"),
    ]
    return next((c for c in candidates if c and Path(c).exists()), None)


def locate() -> tuple[PerfAnalyzer | None, str]:
    """(perf_analyzer ready to run, "") or (None, why it can't run here)."""
    path = _find()
    if path is None:
        return None, f"perf_analyzer not found (python -m hotwire.bench.perf_analyzer install: into {home()})"
    env = dict(os.environ)
    cudart = _cudart_dir()
    if cudart:
        env["LD_LIBRARY_PATH"] = cudart + os.pathsep + env.get("LD_LIBRARY_PATH", "")
    try:
        probe = subprocess.run([path, "--version"], capture_output=True, text=True, env=env, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"perf_analyzer cannot start: {exc}"
    if "error while loading shared libraries" in probe.stderr:
        return None, (
            f"perf_analyzer lacks a library: {probe.stderr.strip()} (libb64: apt-get install libb64-0d; "
            "libcudart: python -m hotwire.bench.perf_analyzer install)"
        )
    return PerfAnalyzer(path, env), ""


def measure(
    tool: PerfAnalyzer,
    model: str,
    url: str,
    concurrency: list[int],
    window_ms: int = 2000,
    extra: list[str] | None = None,
    timeout_s: float = 600,
    protocol: str = "grpc",
) -> list[Measurement]:
    """One perf_analyzer run over the given concurrency levels (`protocol`: grpc or http); raises with its
    output when it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.csv"
        args = [
            tool.path,
            "-m",
            model,
            "-i",
            protocol,
            "-u",
            url,
            "-p",
            str(window_ms),
            "-f",
            str(report),
            "--percentile",
            "50",
        ]
        args += ["--concurrency-range", f"{concurrency[0]}:{concurrency[-1]}:{_step(concurrency)}"]
        args += extra or []
        result = subprocess.run(args, capture_output=True, text=True, env=tool.env, timeout=timeout_s)
        if result.returncode != 0:
            raise RuntimeError(
                f"perf_analyzer failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        rows = list(csv.DictReader(io.StringIO(report.read_text())))
        measured = [
            Measurement(
                int(r["Concurrency"]),
                float(r["Inferences/Second"]),
                float(r["p50 latency"]),
                float(r["p90 latency"]),
                float(r["p99 latency"]),
            )
            for r in rows
        ]
        missing = sorted(
            set(range(concurrency[0], concurrency[-1] + 1, _step(concurrency)))
            - {m.concurrency for m in measured}
        )
        if missing:
            # Over a range, perf_analyzer stops at the first level it can't stabilise and still exits 0.
            raise RuntimeError(
                f"perf_analyzer reported no stable measurement for concurrency {missing}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
    return sorted(measured, key=lambda m: m.concurrency)  # perf_analyzer's CSV is not in concurrency order


def _step(levels: list[int]) -> int:
    steps = {b - a for a, b in zip(levels, levels[1:])}
    if len(steps) > 1:
        raise ValueError(f"perf_analyzer takes evenly spaced concurrency levels, got {levels}")
    return steps.pop() if steps else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hotwire.bench.perf_analyzer",
        description="install Triton's perf_analyzer apart from this environment, or check that it runs",
    )
    parser.add_argument("action", choices=["install", "check"])
    parser.add_argument("--home", type=Path, default=None, help=f"where to install it (default: {home()})")
    args = parser.parse_args(argv)
    if args.home is not None:
        os.environ["HOTWIRE_PERF_ANALYZER_HOME"] = str(args.home)
    if args.action == "install":
        install(home())
    tool, why = locate()
    if tool is None:
        print(f"perf_analyzer can't run: {why}", file=sys.stderr)
        return 1
    print(f"perf_analyzer ready: {tool.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
