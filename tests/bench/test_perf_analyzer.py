"""Triton's perf_analyzer completes a measurement against hotwire (it calls ServerMetadata, ModelMetadata,
ModelConfig and ModelInfer, and trusts the advertised extensions). Skips, saying why, where it can't run, except
under CI=true, where that is a failure (`.ci/run` installs it with `python -m hotwire.bench.perf_analyzer install`)."""

from __future__ import annotations

import pytest

from hotwire.bench import perf_analyzer
from hotwire.server.config import bundled_repository
from external_tools import missing
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
        extra = ["--stability-percentage", "1000", "--max-trials", "5"] + (["--streaming"] if streaming else [])
        results = perf_analyzer.measure(tool, "classifier", server.address, [1, 2], window_ms=300, extra=extra)
    finally:
        server.stop()
    assert [r.concurrency for r in results] == [1, 2]
    assert all(r.throughput > 0 and 0 < r.p50_us <= r.p99_us for r in results)
