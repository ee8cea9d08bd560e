"""Lifecycle benchmark: swap time (load call -> traffic flipped), rollback time (standby and reload), and the
latency clients see during swaps against steady state.

    python -m hotwire.bench.lifecycle [--swaps 10] [--clients 4] [--output bench/RESULTS.md]

Runs `hotwire serve --model-control-mode explicit` on 127.0.0.1 with the wide MLP
(a realistic load: ~1 ms a row) and a closed-loop client load; every number is measured in this run. Writes a
section between the `lifecycle` section markers of bench/run.py.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import numpy as np

from hotwire.bench import models
from hotwire.bench.run import ChildServer, machine_info, markers, replace_section
from hotwire.proto import grpc_service_pb2 as pb
from hotwire.proto import grpc_service_pb2_grpc

CONFIG = """
max_batch_size: 32
dynamic_batching { }
parameters { key: "standby_versions" value: { string_value: "1" } }
"""


class ClientLoad:
    """Closed-loop clients recording (finish time, latency, ok) for every request."""

    def __init__(self, address: str, clients: int) -> None:
        self.samples: list[tuple[float, float, bool]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(address,), daemon=True) for _ in range(clients)
        ]

    def _run(self, address: str) -> None:
        with grpc.insecure_channel(address) as channel:
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = pb.ModelInferRequest(model_name="wide")
            request.inputs.add(name="input", datatype="FP32", shape=[1, 512])
            request.raw_input_contents.append(np.ones((1, 512), np.float32).tobytes())
            deadline = time.monotonic() + 600
            while not self._stop.is_set() and time.monotonic() < deadline:
                started = time.perf_counter()
                try:
                    stub.ModelInfer(request, timeout=30)
                    ok = True
                except grpc.RpcError:
                    ok = False
                done = time.perf_counter()
                with self._lock:
                    self.samples.append((done, done - started, ok))

    def __enter__(self) -> ClientLoad:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else float("nan")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hotwire.bench.lifecycle")
    parser.add_argument("--swaps", type=int, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--output", type=Path, default=Path("bench/RESULTS.md"))
    args = parser.parse_args(argv)
    command = "python -m hotwire.bench.lifecycle " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="hotwire-lifecycle-") as tmp:
        root = Path(tmp)
        models.write_model_repository(root, {"wide": (models.wide_mlp(seed=1), CONFIG)})
        server = ChildServer(
            "hotwire",
            [
                sys.executable,
                "-m",
                "hotwire.server",
                "serve",
                "--model-repository",
                tmp,
                "--host",
                "127.0.0.1",
                "--grpc-port",
                "0",
                "--http-port",
                "-1",
                "--metrics-port",
                "-1",
                "--model-control-mode",
                "explicit",
                "--load-model",
                "wide",
            ],
        )
        try:
            address = server.wait_listening()
            channel = grpc.insecure_channel(address)
            stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
            swap_ms: list[float] = []
            rollback_ms: list[float] = []
            reload_ms: list[float] = []
            windows: list[tuple[float, float]] = []
            with ClientLoad(address, args.clients) as load:
                time.sleep(3.0)  # steady state first
                steady_end = time.perf_counter()
                for step in range(args.swaps):
                    version = step + 2
                    target = root / "wide" / str(version)
                    target.mkdir()
                    (target / "model.onnx").write_bytes(models.wide_mlp(seed=version).SerializeToString())
                    started = time.perf_counter()
                    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="wide"), timeout=300)
                    swap_ms.append((time.perf_counter() - started) * 1e3)
                    windows.append((started, time.perf_counter()))
                    time.sleep(0.3)
                    request = pb.RepositoryModelLoadRequest(model_name="wide")
                    request.parameters["hotwire.rollback"].string_param = ""
                    _, call = stub.RepositoryModelLoad.with_call(request, timeout=300)
                    trailers = dict(call.trailing_metadata())
                    (rollback_ms if trailers["hotwire-action"] == "rollback:standby" else reload_ms).append(
                        float(trailers["hotwire-elapsed-ms"])
                    )
                    time.sleep(0.3)
                    stub.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="wide"), timeout=300)
                    time.sleep(0.3)
            channel.close()
        finally:
            server.stop()
    steady = [lat for done, lat, ok in load.samples if done <= steady_end and ok]
    during = [lat for done, lat, ok in load.samples if ok and any(a <= done <= b + 0.05 for a, b in windows)]
    failed = sum(1 for _, _, ok in load.samples if not ok)
    info = machine_info()
    start_marker, end_marker = markers("lifecycle")
    lines = [
        start_marker,
        "## Model lifecycle: swap and rollback",
        "",
        f"- machine: {info['cpu']}, {info['cores']} cores; {info['date']}",
        f"- command: `{command}`",
        f"- model: wide MLP (fp32 [batch,512] → 2048 → 2048 → 10), `max_batch_size: 32`, standby 1; "
        f"{args.clients} closed-loop clients (one row per request) during all of it",
        "",
        "| measure | median | max |",
        "| --- | ---: | ---: |",
        f"| swap: RepositoryModelLoad call → traffic on the new version (load + warm + flip), ms | "
        f"{statistics.median(swap_ms):.1f} | {max(swap_ms):.1f} |",
        f"| rollback from standby (flip, measured in the server), ms | {statistics.median(rollback_ms):.3f} "
        "| "
        f"{max(rollback_ms):.3f} |"
        if rollback_ms
        else "| rollback from standby | — | — |",
        f"| client p99 latency, steady state, µs | {p99(steady) * 1e6:,.0f} | |",
        f"| client p99 latency, requests finishing during a swap, µs | {p99(during) * 1e6:,.0f} | |",
        "",
        f"Requests: {len(load.samples):,} in total, {failed} failed; {len(during):,} finished during the "
        f"{len(windows)} swap windows.",
        end_marker,
    ]
    section = "\n".join(lines) + "\n"
    replace_section(args.output, section, "lifecycle")
    print(section)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
