"""Triton's perf_analyzer completes a measurement against hotwire, over gRPC and over HTTP (it calls
ServerMetadata, ModelMetadata, ModelConfig and ModelInfer, and trusts the advertised extensions). Skips,
saying why, where it can't run, except under CI=true, where that is a failure (`.ci/run` installs it with
`python -m hotwire.bench.perf_analyzer install`)."""

from __future__ import annotations

import csv
import json
import subprocess
import tempfile
import urllib.request
from pathlib import Path

import pytest

from external_tools import missing
from hotwire.bench import perf_analyzer
from hotwire.server.config import bundled_repository
from server_harness import ServerThread


@pytest.fixture(scope="module")
def tool() -> perf_analyzer.PerfAnalyzer:
    found, why = perf_analyzer.locate()
    if found is None:
        missing(why)
    assert found is not None
    return found


@pytest.mark.parametrize("streaming", [False, True])
def test_perf_analyzer_measures_the_bundled_classifier(tool, streaming):
    server = ServerThread(bundled_repository()).start()
    try:
        # A loose stability bound: this checks that perf_analyzer completes against hotwire, not how steady a
        # shared CI box is (one stalled 300 ms window used to drop a level).
        extra = ["--stability-percentage", "1000", "--max-trials", "5"]
        extra += ["--streaming"] if streaming else []
        results = perf_analyzer.measure(
            tool, "classifier", server.address, [1, 2], window_ms=300, extra=extra
        )
    finally:
        server.stop()
    assert [r.concurrency for r in results] == [1, 2]
    assert all(r.throughput > 0 and 0 < r.p50_us <= r.p99_us for r in results)


def test_perf_analyzer_measures_over_http(tool):
    """perf_analyzer's HTTP client (-i http) against the REST frontend: every request succeeds."""
    server = ServerThread(bundled_repository()).start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "report.csv"
            args = [
                tool.path,
                "-m",
                "classifier",
                "-i",
                "http",
                "-u",
                server.http_address,
                "-p",
                "300",
                "--concurrency-range",
                "1:2",
                "--stability-percentage",
                "1000",
                "--max-trials",
                "5",
                "-f",
                str(report),
            ]
            result = subprocess.run(args, capture_output=True, text=True, env=tool.env, timeout=300)
            assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
            rows = sorted(
                csv.DictReader(report.read_text().splitlines()), key=lambda r: int(r["Concurrency"])
            )
        url = f"http://{server.http_address}/v2/models/classifier/stats"
        with urllib.request.urlopen(url, timeout=30) as response:
            (stats,) = json.load(response)["model_stats"]
    finally:
        server.stop()
    assert [int(r["Concurrency"]) for r in rows] == [1, 2], result.stdout
    assert all(float(r["Inferences/Second"]) > 0 for r in rows)
    assert stats["inference_stats"]["fail"]["count"] == 0
    assert stats["inference_stats"]["success"]["count"] > 0
