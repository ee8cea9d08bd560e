"""What releasing the GIL costs a grpc.aio server: the echo reference plus one extra line per request.

    python -m hotwire.bench.gil_handoff [--repeats 2]

Variants: nothing; a 10 µs pure-Python spin (GIL held); `time.sleep(0)` (releases the GIL, does no work); one
`session.run` of the bundled 7 µs classifier (releases the GIL). perf_analyzer at concurrency 1, interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence

from hotwire.bench import perf_analyzer
from hotwire.bench.run import ChildServer

VARIANT_SERVER = """
import sys, time
import numpy as np, onnxruntime as ort
from hotwire.bench import reference_servers as rs
from hotwire.server.config import bundled_repository
variant = sys.argv[1]
model = str(bundled_repository() / "classifier" / "1" / "model.onnx")
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.add_session_config_entry("session.intra_op.allow_spinning", "0")
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
feeds = {"input": np.zeros((1, 16), np.float32)}
def spin(us):
    end = time.perf_counter() + us / 1e6
    while time.perf_counter() < end:
        pass
extra = {"nothing": lambda: None, "spin 10 µs (GIL held)": lambda: spin(10),
         "time.sleep(0) (GIL released)": lambda: time.sleep(0),
         "session.run (GIL released)": lambda: session.run(None, feeds)}[variant]
echo = rs.ReferenceServicer._infer
def _infer(self, request):
    extra()
    return echo(self, request)
rs.ReferenceServicer._infer = _infer
sys.exit(rs.main(["echo", "--model", model, "--name", "classifier", "--host", "127.0.0.1", "--port", "0"]))
"""
VARIANTS = ("nothing", "spin 10 µs (GIL held)", "time.sleep(0) (GIL released)", "session.run (GIL released)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hotwire.bench.gil_handoff")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    tool, why = perf_analyzer.locate()
    if tool is None:
        print(f"gil_handoff needs perf_analyzer: {why}", file=sys.stderr)
        return 2
    p50: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(args.repeats):
        for variant in VARIANTS:
            server = ChildServer(variant, [sys.executable, "-c", VARIANT_SERVER, variant])
            try:
                url = server.wait_listening()
                extra = ["--stability-percentage", "1000", "--max-trials", "3"]
                p50[variant].append(
                    perf_analyzer.measure(tool, "classifier", url, [1], 2000, extra)[0].p50_us
                )
            finally:
                server.stop()
    print("| echo plus | p50 µs (each run) | median |\n| --- | --- | ---: |")
    for variant, values in p50.items():
        print(f"| {variant} | {', '.join(f'{v:.0f}' for v in values)} | {statistics.median(values):.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
