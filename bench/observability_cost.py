"""What statistics and metrics cost on the request path: hotwire as shipped vs. hotwire with statistics
recording and metrics publishing patched out (in this benchmark's own launcher, not in the product), same
load, interleaved.

    python -m hotwire.bench.observability_cost [--concurrency 16] [--repeats 5] [--output bench/RESULTS.md]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from hotwire.bench import perf_analyzer
from hotwire.bench.run import MODELS, ChildServer, Client, machine_info, markers, replace_section

# Serves the bundled models with VersionStats.record_* and Metrics.publish made no-ops (and so without the
# statistics extension: perf_analyzer rejects statistics that never move).
WITHOUT_OBSERVABILITY = """
import sys
from hotwire.server import dataplane, stats, metrics
dataplane.EXTENSIONS = tuple(e for e in dataplane.EXTENSIONS if e != "statistics")
stats.VersionStats.record_request = lambda self, *a, **k: None
stats.VersionStats.record_batch = lambda self, *a, **k: None
metrics.Metrics.publish = lambda self: None
from hotwire.server.cli import main
sys.exit(main(sys.argv[1:]))
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hotwire.bench.observability_cost")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--window-ms", type=int, default=2000)
    parser.add_argument("--output", type=Path, default=Path("bench/RESULTS.md"))
    args = parser.parse_args(argv)
    command = "python -m hotwire.bench.observability_cost " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    tool, why = perf_analyzer.locate()
    client = Client("perf_analyzer" if tool else "loadgen", args.window_ms, tool)
    flags = ["serve", "--host", "127.0.0.1", "--grpc-port", "0", "--http-port", "-1", "--metrics-port", "0"]
    servers = {
        "with": ChildServer("with", [sys.executable, "-m", "hotwire.server", *flags]),
        "without": ChildServer("without", [sys.executable, "-c", WITHOUT_OBSERVABILITY, *flags]),
    }
    throughput: dict[str, list[float]] = {"with": [], "without": []}
    try:
        urls = {name: server.wait_listening() for name, server in servers.items()}
        for repeat in range(args.repeats):
            for name in ("with", "without") if repeat % 2 == 0 else ("without", "with"):
                sample = client.measure("classifier", urls[name], args.concurrency, MODELS["classifier"])
                throughput[name].append(sample.throughput)
    finally:
        for server in servers.values():
            server.stop()
    with_, without = statistics.median(throughput["with"]), statistics.median(throughput["without"])
    info = machine_info()
    start_marker, end_marker = markers("observability")
    section = (
        "\n".join(
            [
                start_marker,
                "## Cost of statistics and metrics on the request path",
                "",
                f"- machine: {info['cpu']}, {info['cores']} cores; {info['date']}",
                f"- command: `{command}`; client: {client.describe()}",
                f"- bundled classifier, concurrency {args.concurrency}, {args.repeats} interleaved repeats "
                "(medians)",
                "",
                "| hotwire | inf/s |",
                "| --- | ---: |",
                "| as shipped (statistics recorded per request, metrics published each second) | "
                f"{with_:,.0f} |",
                f"| statistics and metrics patched out | {without:,.0f} |",
                f"| cost | {(1 - with_ / without) * 100:+.1f} % |",
                "",
                "Per-run throughput: with "
                + ", ".join(f"{v:,.0f}" for v in throughput["with"])
                + "; without "
                + ", ".join(f"{v:,.0f}" for v in throughput["without"])
                + ".",
                end_marker,
            ]
        )
        + "\n"
    )
    replace_section(args.output, section, "observability")
    print(section)
    _ = why
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
