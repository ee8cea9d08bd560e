"""Soak: hotwire's resident memory idle and under sustained load, and whether it grows.

    python -m hotwire.bench.soak [--seconds 120] [--concurrency 16] [--output bench/RESULTS.md]

Serves the bundled models on 127.0.0.1, drives both (a raw-image request through the preprocessing pipeline
and the small classifier) with closed-loop clients for the given time, samples the server's RSS every few
seconds, and reports idle, peak and final RSS and the growth slope over the second half of the run
(MiB per minute).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from hotwire.bench.run import ChildServer, machine_info, markers, replace_section, rss_mib
from hotwire.proto import grpc_service_pb2 as pb


def _requests() -> list[bytes]:
    classifier = pb.ModelInferRequest(model_name="classifier")
    classifier.inputs.add(name="input", datatype="FP32", shape=[4, 16])
    classifier.raw_input_contents.append(np.ones((4, 16), np.float32).tobytes())
    image = pb.ModelInferRequest(model_name="image_classifier")
    image.inputs.add(name="image", datatype="UINT8", shape=[1, 120, 160, 3])
    image.raw_input_contents.append(np.full((1, 120, 160, 3), 77, np.uint8).tobytes())
    return [classifier.SerializeToString(), image.SerializeToString()]


async def _drive(url: str, concurrency: int, seconds: float, counts: list[int]) -> None:
    requests = _requests()
    async with grpc.aio.insecure_channel(url) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        deadline = time.monotonic() + seconds

        async def client(index: int) -> None:
            while time.monotonic() < deadline:
                try:
                    await call(requests[index % 2], timeout=30)
                    counts[0] += 1
                except grpc.RpcError:
                    counts[1] += 1

        await asyncio.gather(*(client(i) for i in range(concurrency)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hotwire.bench.soak")
    parser.add_argument("--seconds", type=float, default=120)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--output", type=Path, default=Path("bench/RESULTS.md"))
    args = parser.parse_args(argv)
    command = "python -m hotwire.bench.soak " + " ".join(argv if argv is not None else sys.argv[1:])
    server = ChildServer(
        "hotwire",
        [
            sys.executable,
            "-m",
            "hotwire.server",
            "serve",
            "--host",
            "127.0.0.1",
            "--grpc-port",
            "0",
            "--http-port",
            "-1",
            "--metrics-port",
            "-1",
        ],
    )
    samples: list[tuple[float, float]] = []
    counts = [0, 0]
    try:
        url = server.wait_listening()
        time.sleep(2.0)
        idle = rss_mib(server.proc.pid) or 0.0
        stop = threading.Event()

        def sample() -> None:
            started = time.monotonic()
            while not stop.wait(3.0):
                value = rss_mib(server.proc.pid)
                if value is not None:
                    samples.append((time.monotonic() - started, value))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        asyncio.run(_drive(url, args.concurrency, args.seconds, counts))
        stop.set()
        sampler.join(10)
        after = rss_mib(server.proc.pid) or 0.0
    finally:
        server.stop()
    half = [s for s in samples if s[0] >= args.seconds / 2]
    slope = (
        statistics.linear_regression([t for t, _ in half], [v for _, v in half]).slope * 60
        if len(half) >= 3
        else 0.0
    )
    info = machine_info()
    start_marker, end_marker = markers("soak")
    section = (
        "\n".join(
            [
                start_marker,
                "## Memory under sustained load (soak)",
                "",
                f"- machine: {info['cpu']}, {info['cores']} cores; {info['date']}",
                f"- command: `{command}`",
                f"- load: {args.concurrency} closed-loop clients on 127.0.0.1 alternating the bundled "
                "classifier (4 rows) and a "
                f"160×120 raw image through the image pipeline, {args.seconds:.0f} s; {counts[0]:,} "
                "requests, "
                f"{counts[1]} failed",
                "",
                "| resident memory (MiB) | value |",
                "| --- | ---: |",
                f"| idle, models loaded | {idle:.0f} |",
                f"| peak under load | {max((v for _, v in samples), default=0.0):.0f} |",
                f"| after the load | {after:.0f} |",
                f"| growth over the second half of the run, MiB/min | {slope:+.2f} |",
                end_marker,
            ]
        )
        + "\n"
    )
    replace_section(args.output, section, "soak")
    print(section)
    return 0 if counts[1] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
