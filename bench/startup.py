"""Start-up time: from process start to ServerReady, with a cold and a warm kernel cache.

    python -m hotwire.bench.startup [--repeats 3] [--output bench/RESULTS.md]

Each repeat starts `hotwire serve` on the bundled repository twice, interleaved: first with an empty kernel
cache (a first start: every numba kernel compiles), then with the cache that start filled (every later start).
The time runs from spawning the process until ServerReady answers true on 127.0.0.1; resident memory is read
then.
"""

from __future__ import annotations

import argparse
import os
import shlex
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

READY_TIMEOUT_S = 180.0


def _time_to_ready(cache_dir: str) -> tuple[float, float]:
    """(seconds from spawn to ServerReady true, resident MiB then) for one `hotwire serve`."""
    os.environ["NUMBA_CACHE_DIR"] = cache_dir  # inherited by the child
    started = time.perf_counter()
    server = ChildServer(
        "hotwire",
        [
            sys.executable,
            "-m",
            "hotwire.server",
            "serve",
            "--host",
            HOST,
            "--grpc-port",
            "0",
            "--http-port",
            "-1",
            "--metrics-port",
            "-1",
        ],
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
    runs: dict[str, list[tuple[float, float]]] = {"cold": [], "warm": []}
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="hotwire-startup-") as cache:
            for kind in ("cold", "warm"):
                runs[kind].append(_time_to_ready(cache))
                print(f"repeat {repeat + 1}: {kind} start {runs[kind][-1][0]:.2f} s", file=sys.stderr)
    info = machine_info()
    start_marker, end_marker = markers("startup")
    rows = [
        f"| {kind} kernel cache | {statistics.median(t for t, _ in done):.2f} | "
        f"{', '.join(f'{t:.2f}' for t, _ in done)} | {statistics.median(m for _, m in done):.0f} |"
        for kind, done in runs.items()
    ]
    section = (
        "\n".join(
            [
                start_marker,
                "## Start-up: process start to ServerReady",
                "",
                f"- machine: {info['cpu']}, {info['cores']} cores; {info['date']}",
                f"- command: `{command}`",
                "- the bundled repository; cold: an empty kernel cache (a first start compiles every "
                "kernel), warm: the "
                "cache the cold start of the same repeat filled; interleaved",
                "",
                "| start | median s | each repeat, s | resident MiB at ready |",
                "| --- | ---: | --- | ---: |",
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
