"""Start-up time: from process start to ServerReady, with a cold and a warm kernel cache.

    python -m hotwire.bench.startup [--repeats 3] [--output bench/RESULTS.md]

Each repeat starts `hotwire serve` twice on each of two repositories, interleaved: first with an empty
kernel cache (a first start: the kernels its models need compile), then with the cache that start filled
(every later start). The repositories: the bundled one (its image_classifier declares an image pipeline, so
numba loads), and its classifier alone (no preprocessing: numba is never imported). The time runs from
spawning the process until ServerReady answers true on 127.0.0.1; resident memory is read then.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import grpc

from hotwire.bench.run import HOST, ChildServer, machine_info, markers, replace_section, rss_mib
from hotwire.proto import grpc_service_pb2 as pb
from hotwire.proto import grpc_service_pb2_grpc
from hotwire.server.config import bundled_repository

READY_TIMEOUT_S = 180.0


def _time_to_ready(cache_dir: str, repository: Path) -> tuple[float, float]:
    """(seconds from spawn to ServerReady true, resident MiB then) for one `hotwire serve`."""
    started = time.perf_counter()
    server = ChildServer(
        "hotwire",
        [
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
            "-1",
            "--metrics-port",
            "-1",
        ],
        env={**os.environ, "NUMBA_CACHE_DIR": cache_dir},  # set for the child only
    )
    try:
        address = server.wait_listening(READY_TIMEOUT_S)
        with grpc.insecure_channel(address) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            while not stub.ServerReady(pb.ServerReadyRequest(), timeout=10).ready:
                if time.perf_counter() - started > READY_TIMEOUT_S:
                    raise RuntimeError("the server never became ready")
                time.sleep(0.01)
        elapsed = time.perf_counter() - started
        return elapsed, rss_mib(server.proc.pid) or 0.0
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hotwire.bench.startup")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=Path("bench/RESULTS.md"))
    args = parser.parse_args(argv)
    command = "python -m hotwire.bench.startup " + shlex.join(argv if argv is not None else sys.argv[1:])
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="hotwire-startup-repository-") as scratch:
        classifier_only = Path(scratch) / "models"
        shutil.copytree(bundled_repository() / "classifier", classifier_only / "classifier")
        repositories = {"bundled": bundled_repository(), "classifier only": classifier_only}
        for repeat in range(args.repeats):
            for name, repository in repositories.items():
                with tempfile.TemporaryDirectory(prefix="hotwire-startup-") as cache:
                    for kind in ("cold", "warm"):
                        done = runs.setdefault((name, kind), [])
                        done.append(_time_to_ready(cache, repository))
                        print(
                            f"repeat {repeat + 1}: {name}, {kind} start {done[-1][0]:.2f} s", file=sys.stderr
                        )
    info = machine_info()
    start_marker, end_marker = markers("startup")
    rows = [
        f"| {name} | {kind} kernel cache | {statistics.median(t for t, _ in done):.2f} | "
        f"{', '.join(f'{t:.2f}' for t, _ in done)} | {statistics.median(m for _, m in done):.0f} |"
        for (name, kind), done in runs.items()
    ]
    section = (
        "\n".join(
            [
                start_marker,
                "## Start-up: process start to ServerReady",
                "",
                f"- machine: {info['cpu']}, {info['cores']} cores; {info['date']}",
                f"- command: `{command}`",
                "- repositories: the bundled one (classifier, and image_classifier with an image "
                "pipeline: numba loads), and its classifier alone (no preprocessing: numba is never "
                "imported); cold: an empty kernel cache (a first start compiles the kernels its models "
                "need), warm: the cache the cold start of the same repeat filled; interleaved",
                "",
                "| repository | start | median s | each repeat, s | resident MiB at ready |",
                "| --- | --- | ---: | --- | ---: |",
                *rows,
                end_marker,
            ]
        )
        + "\n"
    )
    replace_section(args.output, section, "startup")
    print(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
